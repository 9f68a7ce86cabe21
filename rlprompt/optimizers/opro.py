"""OPRO: an LLM proposes new instructions from a scored history (Yang et al. 2023,
"Large Language Models as Optimizers", https://arxiv.org/abs/2309.03409, google-deepmind/opro).

As in the paper's meta-prompt (opro/optimization/opt_utils.py `gen_meta_prompt`):
- the top `history_top` (20) past instructions, sorted *ascending* by score, each shown with an
  integer score 0-100 (the best sits last, next to the request: the paper's recency argument);
- `exemplars` (3) random task exemplars, here a training customer turn with a reference reply of
  its stage, with <INS> where the instruction goes;
- a request for a new instruction, different from the old ones and scoring higher, between
  <INS></INS> tags.
Each step samples `candidates_per_step` (8) replies at `meta_temperature` (1.0), de-duplicates and
length-filters the extracted instructions, and scores each on a fixed training subset of
`score_subset` scenarios through the budgeted target. The history starts from the task's
hand-written base instruction and seed prompts. An instruction is a whole system prompt.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass

from rlprompt.optimizers.base import (
    BestSoFar,
    OptimizerContext,
    OptimizerResult,
    register_optimizer,
)
from rlprompt.optimizers.llm import LLMSearchConfig, extract_instruction, filter_candidates, normalize
from rlprompt.prompt_set import PromptEntry
from rlprompt.targets.cache import BudgetExhausted
from rlprompt.task import Scenario, Task

log = logging.getLogger(__name__)
STATE_FILE = "opro_state.json"


@dataclass
class OproConfig(LLMSearchConfig):
    """OPRO (Yang et al. 2023): the meta-prompt's shape (docs/OPTIMIZERS.md)."""

    name: str = "opro"
    # sampled optimizer-LLM replies per step (one seed each)
    candidates_per_step: int = 8
    # best past instructions in the meta-prompt, shown ascending with scores 0-100
    history_top: int = 20
    # random training exemplars (customer turn + reference reply of its stage)
    exemplars: int = 3


HEADER = (
    "I have some texts along with their corresponding scores. The texts are arranged in ascending "
    "order based on their scores, where higher scores indicate better quality."
)
EXEMPLAR_INTRO = (
    "The following exemplars show how to apply your text: you replace <INS> in each input with your "
    "text, then a {role} reads the input and writes a reply to the customer. The output shows a "
    "good reply; texts whose replies are closer to good replies get higher scores."
)
REQUEST = (
    "Write your new text that is different from the old ones and has a score as high as possible. "
    "Write the text between <INS> and </INS>."
)


@dataclass
class Scored:
    instruction: str
    reward: float  # mean raw reward on the training subset
    score: float  # the reward normalised to [0, 1] with the reward's bounds
    step: int  # -1: seed instruction


def render_meta_prompt(
    history: list[tuple[str, float]], exemplars: list[tuple[str, str]], role: str, top: int = 20
) -> str:
    """The OPRO meta-prompt. history: (instruction, score in [0, 1]); exemplars: (customer, reply)."""
    best = sorted(history, key=lambda item: item[1])[-top:] if top > 0 else []
    parts = [HEADER, ""]
    for instruction, score in best:
        parts += ["text:", instruction, "score:", str(round(100 * score)), ""]
    parts += [EXEMPLAR_INTRO.format(role=role), ""]
    for customer, reply in exemplars:
        parts += ["input:", "System: <INS>", f"Customer: {customer}", "output:", reply, ""]
    parts.append(REQUEST)
    return "\n".join(parts)


def draw_exemplars(task: Task, train: list[Scenario], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """n random training scenarios, each with a reference reply of its stage."""
    chosen = rng.sample(train, min(n, len(train)))
    return [(s.customer, rng.choice(task.stage[s.stage].reference_replies)) for s in chosen]


@register_optimizer("opro", OproConfig)
class OPRO:
    def __init__(self, ctx: OptimizerContext) -> None:
        self.ctx, self.cfg = ctx, ctx.cfg
        self.history: list[Scored] = []
        self.step = 0
        self.rng = random.Random(f"opro-{ctx.run.seed}")
        self.curve = BestSoFar()

    # ------------------------------------------------------------------ state

    def save(self) -> None:
        self.ctx.save_state(
            STATE_FILE,
            {
                "step": self.step,
                "history": [asdict(h) for h in self.history],
                "rng": _jsonable(self.rng.getstate()),
                "curve": self.curve.points,
                "target_counter": self.ctx.target.counter.state_dict(),
                "llm_counter": self.ctx.llm.counter.state_dict(),
            },
        )

    def load(self) -> bool:
        state = self.ctx.load_state(STATE_FILE)
        if state is None:
            return False
        self.step = state["step"]
        self.history = [Scored(**h) for h in state["history"]]
        self.rng.setstate(_tupled(state["rng"]))
        self.curve = BestSoFar([tuple(p) for p in state["curve"]])
        self.ctx.target.counter.load_state_dict(state["target_counter"])
        self.ctx.llm.counter.load_state_dict(state["llm_counter"])
        return True

    # ------------------------------------------------------------------ loop

    def evaluate(self, instruction: str, step: int) -> Scored:
        reward = self.ctx.mean_reward(instruction, self.ctx.score_subset())
        scored = Scored(instruction, reward, self.ctx.normalize(reward), step)
        self.history.append(scored)
        self.curve.add(self.ctx.target.counter.calls, reward)
        return scored

    def seed_history(self) -> None:
        task = self.ctx.task
        seen: set[str] = set()
        for text in [task.base_instruction, *task.seed_prompts]:
            if normalize(text) not in seen:
                seen.add(normalize(text))
                self.evaluate(text, -1)

    def propose(self) -> list[str]:
        """One OPRO step's candidates: sampled, extracted, de-duplicated, length-filtered."""
        meta = render_meta_prompt(
            [(h.instruction, h.score) for h in self.history],
            draw_exemplars(self.ctx.task, self.ctx.train, self.cfg.exemplars, self.rng),
            self.ctx.task.assistant_role,
            self.cfg.history_top,
        )
        base_seed = self.ctx.run.seed * 1_000_003 + self.step * 1_009
        seeds = [base_seed + i for i in range(self.cfg.candidates_per_step)]
        replies = self.ctx.llm.sample(meta, seeds)
        seen = {normalize(h.instruction) for h in self.history}
        return filter_candidates(
            [extract_instruction(r) for r in replies],
            seen,
            self.cfg.min_prompt_chars,
            self.cfg.max_prompt_chars,
        )

    def run(self) -> OptimizerResult:
        try:
            if not self.load():
                self.seed_history()
                self.save()
            while self.step < self.cfg.steps:
                candidates = self.propose()
                log.info("opro step %d: %d new candidates", self.step, len(candidates))
                for candidate in candidates:
                    self.evaluate(candidate, self.step)
                self.step += 1
                self.save()
        except BudgetExhausted as err:
            log.info("opro stops at step %d: %s", self.step, err)
        self.save()
        if not self.history:  # the budget did not cover a single score: keep the hand-written prompt
            best = Scored(self.ctx.task.base_instruction, float("nan"), float("nan"), -1)
        else:
            best = max(self.history, key=lambda h: h.reward)
        prompts = self.ctx.document(
            "opro", PromptEntry(best.instruction, best.instruction), source_model=self.cfg.optimizer_model
        )
        return self.ctx.result(
            "opro",
            prompts,
            self.curve.points,
            steps=self.step,
            candidates_scored=sum(h.step >= 0 for h in self.history),
            best_train_reward=best.reward,
        )


def _jsonable(state):
    return [_jsonable(x) for x in state] if isinstance(state, (tuple, list)) else state


def _tupled(state):
    return tuple(_tupled(x) for x in state) if isinstance(state, list) else state
