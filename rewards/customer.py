"""A simulated customer (an LLM playing the scenario's persona) and the `customer` reward.

`LLMCustomer` implements `rlprompt.env.conversation.CustomerSimulator`: it sees the conversation
with roles flipped (the seller's turns are its "user" turns) and answers in character, batched,
through a `CachedTarget` counted as role "customer".

`CustomerReward` scores how the customer reacts to the seller:
(a) P(agree): the customer LLM is asked, at the end of the conversation, whether it agrees to
    the next step (test drive, meeting, purchase); P(Yes) / (P(Yes) + P(No)) from next-token
    probabilities, and
(b) the mean VADER compound sentiment of the customer's simulated turns, mapped to [0, 1].
With `turns: 0` the conversation holds no simulated turn, so the module asks the simulator for
one reaction to the seller's last reply (cached, so scoring twice costs nothing).
"""

from __future__ import annotations

from functools import lru_cache

from rlprompt.errors import RewardError
from rlprompt.rewards.base import RewardResult, Sample, register_reward
from rlprompt.rewards.llm import Choices, choice_probs
from rlprompt.targets.base import GenerationParams, Message
from rlprompt.targets.cache import CachedTarget
from rlprompt.task import Scenario, Task

AGREE_CHOICES = Choices.of(["Yes", "No"])

AGREE_QUESTION = (
    "(Quick question for you, the customer, about the conversation so far: would you agree to the next step "
    "the salesperson is working towards, such as a test drive, a meeting or a purchase? Answer Yes or No.)"
)


def customer_system_prompt(task: Task, scenario: Scenario) -> str:
    """The persona the customer LLM plays: who they are, what they need, how urgent it is."""
    persona, urgency = task.persona[scenario.persona], task.urgency[scenario.urgency]
    return (
        f"You are a customer talking to a {task.assistant_role}. Stay in character as the customer. "
        f"Who you are: {persona.description} What you care about: {', '.join(persona.needs)}. "
        f"You like a salesperson who is {persona.preferred_tone}. Your situation: {urgency.description} "
        "React honestly to what the salesperson just said: be pleased by helpful, respectful answers and "
        "annoyed by rude, pushy or unhelpful ones. Reply in one or two short sentences."
    )


def flipped(conversation: list[Message]) -> list[Message]:
    """The conversation from the customer's side: seller turns become "user", customer turns "assistant"."""
    swap = {"user": "assistant", "assistant": "user"}
    return [{"role": swap[m["role"]], "content": m["content"]} for m in conversation if m["role"] in swap]


class LLMCustomer:
    """Batched simulated customer behind a cached, counted target (role "customer")."""

    def __init__(self, task: Task, target: CachedTarget, max_new_tokens: int = 32, seed: int = 0) -> None:
        self.task = task
        self.target = target
        self.params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=seed)

    def messages(self, scenario: Scenario, conversation: list[Message]) -> list[Message]:
        return [
            {"role": "system", "content": customer_system_prompt(self.task, scenario)},
            *flipped(conversation),
        ]

    def reply(self, scenarios: list[Scenario], conversations: list[list[Message]]) -> list[str]:
        requests = [self.messages(s, c) for s, c in zip(scenarios, conversations)]
        return [r.text or "..." for r in self.target.generate(requests, self.params)]


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment01(text: str) -> float:
    """VADER compound in [-1, 1] mapped to [0, 1]."""
    return (_vader().polarity_scores(text)["compound"] + 1.0) / 2.0


def simulated_turns(sample: Sample) -> list[str]:
    """The customer turns after the scenario's own customer message (i.e. the simulated ones)."""
    start = len(sample.scenario.history) + 1
    return [m["content"] for m in sample.conversation[start:] if m["role"] == "user"]


@register_reward("customer")
class CustomerReward:
    """agree_weight x P(agree to the next step) + sentiment_weight x customer sentiment, in [0, 1]."""

    low, high = 0.0, 1.0

    def __init__(
        self,
        task: Task,
        customer_simulator: LLMCustomer,
        customer_scorer: CachedTarget,
        agree_weight: float = 0.5,
        sentiment_weight: float = 0.5,
        question: str = AGREE_QUESTION,
    ) -> None:
        if agree_weight < 0 or sentiment_weight < 0 or agree_weight + sentiment_weight <= 0:
            raise RewardError(
                "reward.options.customer: agree_weight and sentiment_weight must be >= 0, not both 0"
            )
        self.task = task
        self.simulator = customer_simulator
        self.scorer = customer_scorer
        total = agree_weight + sentiment_weight
        self.agree_weight, self.sentiment_weight = agree_weight / total, sentiment_weight / total
        self.question = question

    def agree_prompt(self, sample: Sample) -> list[Message]:
        """The customer's view of the conversation, with the yes/no question appended to the last seller turn."""
        messages = self.simulator.messages(sample.scenario, sample.conversation)
        last = messages[-1]
        if last["role"] == "user":
            messages[-1] = {"role": "user", "content": f"{last['content']}\n\n{self.question}"}
        else:
            messages.append({"role": "user", "content": self.question})
        return messages

    def score(self, samples: list[Sample]) -> list[RewardResult]:
        # Conversations that end on the seller get one simulated reaction to that last reply.
        needs_reaction = [
            i for i, s in enumerate(samples) if s.conversation and s.conversation[-1]["role"] == "assistant"
        ]
        reactions = dict(
            zip(
                needs_reaction,
                self.simulator.reply(
                    [samples[i].scenario for i in needs_reaction],
                    [samples[i].conversation for i in needs_reaction],
                ),
            )
        )
        agree = choice_probs(self.scorer, [self.agree_prompt(s) for s in samples])
        results = []
        for i, sample in enumerate(samples):
            turns = simulated_turns(sample) + ([reactions[i]] if i in reactions else [])
            sentiment = sum(sentiment01(t) for t in turns) / len(turns) if turns else 0.5
            p_yes = agree[i][0][0]
            score = self.agree_weight * p_yes + self.sentiment_weight * sentiment
            reason = (
                f"P(agree)={p_yes:.2f}, sentiment={sentiment:.2f}, customer: {turns[-1][:80]!r}"
                if turns
                else ""
            )
            results.append(RewardResult(min(1.0, max(0.0, score)), reason))
        return results
