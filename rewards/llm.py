"""LLM probabilities over a few answer tokens, for the judge ("1".."5") and the customer (Yes/No).

Reading next-token probabilities instead of parsing generated text gives a smooth score (an
expected value, not a coin-flip between digits) and never fails on a chatty answer. A
`ChoiceScorer` is a `Target` whose reply text is the JSON probability vector, so it goes through
the same `CachedTarget` as every other LLM call: cached on disk, counted per role, budgeted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from rlprompt.errors import UserError
from rlprompt.targets.base import Conversation, GenerationParams, Reply, validate_conversation
from rlprompt.targets.cache import CachedTarget, CallCounter

# One cache-key setting for every choice call: one answer token, read not sampled.
CHOICE_PARAMS = GenerationParams(max_new_tokens=1, temperature=0.0)


@dataclass(frozen=True)
class Choices:
    """Answer labels and the surface forms a tokenizer may produce for each (" Yes", "yes", ...)."""

    labels: tuple[str, ...]
    variants: tuple[tuple[str, ...], ...]
    # Text that starts the answer (local models only: chat APIs cannot prefill the assistant turn).
    # Small models put most of their mass on the labels only after such a prefix.
    answer_prefix: str = ""

    @classmethod
    def of(cls, labels: list[str], answer_prefix: str = "") -> Choices:
        def forms(label: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys([label, " " + label, label.lower(), " " + label.lower()]))

        return cls(tuple(labels), tuple(forms(label) for label in labels), answer_prefix)

    def key(self) -> str:
        return ",".join(self.labels) + (f"|{self.answer_prefix}" if self.answer_prefix else "")


def decode_probs(reply: Reply) -> tuple[list[float], float]:
    """(probabilities over the labels, probability mass the model put on them at all)."""
    payload = json.loads(reply.text)
    return [float(p) for p in payload["probs"]], float(payload["mass"])


def _encode(probs: list[float], mass: float) -> str:
    return json.dumps({"probs": [round(p, 6) for p in probs], "mass": round(mass, 6)})


class HFChoiceScorer:
    """One batched forward pass (left padded) and the next-token distribution at the answer slot."""

    def __init__(self, choices: Choices, model: str, loaded: tuple, batch_size: int = 8) -> None:
        self.model, self.tokenizer = loaded
        self.choices = choices
        self.batch_size = batch_size
        self.target_id = f"choice:{choices.key()}:hf:{model}"
        self.token_ids = [self._first_ids(forms) for forms in choices.variants]

    def _first_ids(self, forms: tuple[str, ...]) -> list[int]:
        """First token of each surface form, kept only when that token alone spells the label.

        A form such as " 1" may tokenize as a bare space then "1"; counting the space token would
        add unrelated mass to the label. Several forms may share one id (counted once).
        """
        ids = set()
        for form in forms:
            first = self.tokenizer.encode(form, add_special_tokens=False)[0]
            if self.tokenizer.decode([first]).strip().lower() == form.strip().lower():
                ids.add(first)
        if not ids:
            raise UserError(f"{self.target_id}: no token of this tokenizer spells the answer {forms[0]!r}")
        return sorted(ids)

    def render(self, conversation: Conversation) -> str:
        validate_conversation(conversation)
        chat = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return chat + self.choices.answer_prefix

    @torch.inference_mode()
    def generate(self, conversations: list[Conversation], params: GenerationParams) -> list[Reply]:
        texts = [self.render(c) for c in conversations]
        replies: list[Reply] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(self.model.device) for k, v in enc.items()}
            # Left padding puts every answer slot at position -1.
            logits = self.model(**enc).logits[:, -1, :].float()
            probs = torch.softmax(logits, dim=-1)
            per_label = torch.stack([probs[:, ids].sum(dim=-1) for ids in self.token_ids], dim=-1)
            mass = per_label.sum(dim=-1)
            normalised = per_label / mass.clamp_min(1e-12).unsqueeze(-1)
            for row, m, n_prompt in zip(
                normalised.tolist(), mass.tolist(), enc["attention_mask"].sum(1).tolist()
            ):
                replies.append(Reply(text=_encode(row, m), prompt_tokens=int(n_prompt), completion_tokens=1))
        return replies


class OpenAIChoiceScorer:
    """`logprobs=True, top_logprobs=20, max_tokens=1`; the same expectation from the returned top-20.

    Goes through the target's client path (`OpenAIChat`): bounded concurrency, retries with
    backoff on 429 / 5xx / timeouts / malformed bodies (honouring Retry-After) counted on
    `retry_counter` (the role's counter), completed replies kept, the key scrubbed from errors.
    """

    def __init__(
        self,
        choices: Choices,
        model: str,
        base_url: str = "",
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        *,
        max_concurrency: int = 8,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        retry_counter: CallCounter | None = None,
        where: str = "reward endpoint",
    ) -> None:
        from rlprompt.targets.openai_api import OpenAIChat

        self._api = OpenAIChat(
            model,
            base_url,
            api_key_env,
            max_concurrency=max_concurrency,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            retry_counter=retry_counter,
            where=where,
        )
        self.choices = choices
        self.model = model
        self.target_id = f"choice:{choices.key()}:openai:{base_url.rstrip('/')}:{model}"
        self._forms = {form.strip(): i for i, forms in enumerate(choices.variants) for form in forms}

    def generate(self, conversations: list[Conversation], params: GenerationParams) -> list[Reply]:
        return self._api.run_batch(conversations, self._one)

    def _one(self, conversation: Conversation) -> Reply:
        return self._api.request(
            self._parse, messages=conversation, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20
        )

    def _parse(self, response) -> Reply:
        from rlprompt.targets.openai_api import first_choice

        logprobs = getattr(first_choice(response), "logprobs", None)  # no choices at all: retried
        content = logprobs.content if logprobs else None
        if not content:
            raise UserError(
                f"{self.target_id}: the server returned no logprobs. The judge and customer rewards need "
                "`logprobs=True, top_logprobs=20` support (vLLM and OpenAI have it); use a local HF model "
                "instead (reward.judge_model / reward.customer_model) or drop the module from reward.modules"
            )
        per_label = [0.0] * len(self.choices.labels)
        for top in content[0].top_logprobs or []:
            index = self._forms.get(top.token.strip())
            if index is not None:
                per_label[index] += math.exp(top.logprob)
        mass = sum(per_label)
        if mass <= 0:
            # None of the answer tokens in the top 20: no information, so a uniform belief.
            return Reply(
                text=_encode([1 / len(per_label)] * len(per_label), 0.0), prompt_tokens=0, completion_tokens=1
            )
        return Reply(text=_encode([p / mass for p in per_label], mass), prompt_tokens=0, completion_tokens=1)


def choice_probs(scorer: CachedTarget, conversations: list[Conversation]) -> list[tuple[list[float], float]]:
    """Probabilities over the scorer's labels for each conversation (cached, counted)."""
    return [decode_probs(r) for r in scorer.generate(conversations, CHOICE_PARAMS)]


def transcript(conversation: Conversation, user: str = "Customer", assistant: str = "Salesperson") -> str:
    """A plain-text transcript, for prompts that show a whole conversation to an LLM."""
    labels = {"user": user, "assistant": assistant}
    return "\n".join(f"{labels[m['role']]}: {m['content']}" for m in conversation if m["role"] in labels)
