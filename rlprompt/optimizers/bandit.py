"""Thompson-sampling bandit over whole system prompts, with evolution (the seed document's design).

- Portfolio: the task's base instruction and seed prompts, each arm with a Beta(1, 1) prior.
- Every target call: draw one sample from each active arm's Beta posterior, play the argmax on
  one random training scenario (Thompson 1933; Chapelle & Li 2011), normalise the reward to
  [0, 1] with the reward's bounds and update fractionally: α += r, β += 1 − r (Agrawal & Goyal
  2012 use a Bernoulli(r) draw instead; the fractional update has the same mean, less noise).
- Every `retire_every` plays: best = the arm with the highest posterior mean; an arm i retires when
  P(X_i > X_best) < `retire_threshold`, computed exactly as ∫ f_i(x) F_best(x) dx by quadrature.
- The math is shared with the serving gateway (rlprompt/optimizers/bandit_math.py); only the source of
  rewards differs.
- Refill to `portfolio_size` with LLM rewrites (mutations) of the best prompt; a mutant's prior
  inherits the best's posterior mean m at effective sample size ess = max(prior_ess_min,
  prior_ess_frac × n_best): Beta(m·ess, (1 − m)·ess), n_best = the best arm's number of plays.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

from rlprompt.optimizers.bandit_math import (
    best_index,
    beta_update,
    mutant_prior,
    posterior_mean,
    retire_probability,
    retirements,
    thompson_choice,
)
from rlprompt.optimizers.base import (
    BestSoFar,
    OptimizerContext,
    OptimizerResult,
    register_optimizer,
)
from rlprompt.optimizers.llm import LLMSearchConfig, extract_instruction, filter_candidates, normalize
from rlprompt.prompt_set import PromptEntry
from rlprompt.targets.cache import BudgetExhausted

# mutant_prior and retire_probability are re-exported: callers and tests import them from here.
__all__ = ["MUTATE", "Arm", "ThompsonBandit", "mutant_prior", "retire_probability"]
log = logging.getLogger(__name__)
STATE_FILE = "bandit_state.json"


@dataclass
class BanditConfig(LLMSearchConfig):
    """Thompson-sampling bandit with evolution; the serving gateway (rlprompt/serve/) plays the
    same method with these settings."""

    name: str = "bandit"
    retire_every: int = 24
    retire_threshold: float = 0.05
    portfolio_size: int = 6
    prior_ess_min: float = 10.0
    prior_ess_frac: float = 0.2


MUTATE = (
    "Here is an instruction for a {role}. Customers get good replies when it is followed.\n\n"
    "Instruction:\n{prompt}\n\n"
    "Rewrite the instruction so that the replies become even better: keep what works, change the "
    "wording or add one useful rule. Write the new instruction between <INS> and </INS>."
)


@dataclass
class Arm:
    prompt: str
    alpha: float = 1.0
    beta: float = 1.0
    plays: int = 0
    reward_sum: float = 0.0  # raw reward, for reporting
    origin: str = "seed"  # seed | mutant
    born: int = 0  # play index when it joined
    retired_at: int | None = None

    @property
    def mean(self) -> float:
        return posterior_mean(self.alpha, self.beta)

    @property
    def active(self) -> bool:
        return self.retired_at is None

    def update(self, r: float) -> None:
        self.alpha, self.beta = beta_update(self.alpha, self.beta, r)
        self.plays += 1


@register_optimizer("bandit", BanditConfig)
class ThompsonBandit:
    def __init__(self, ctx: OptimizerContext) -> None:
        self.ctx, self.cfg = ctx, ctx.cfg
        self.rng = np.random.default_rng(ctx.run.seed)
        self.arms: list[Arm] = []
        self.t = 0  # plays so far (a play is one target call, or a cache hit of the run's own cache)
        self.round = 0
        self.window: list[float] = []  # raw rewards since the last curve point
        self.curve = BestSoFar()
        self.retirements: list[dict] = []

    # ------------------------------------------------------------------ state

    def save(self) -> None:
        self.ctx.save_state(
            STATE_FILE,
            {
                "t": self.t,
                "round": self.round,
                "arms": [asdict(a) for a in self.arms],
                "window": self.window,
                "curve": self.curve.points,
                "retirements": self.retirements,
                "rng": self.rng.bit_generator.state,
                "target_counter": self.ctx.target.counter.state_dict(),
                "llm_counter": llm.state_dict() if (llm := self.ctx.llm_counter()) is not None else None,
            },
        )

    def load(self) -> bool:
        state = self.ctx.load_state(STATE_FILE)
        if state is None:
            return False
        self.t, self.round, self.window = state["t"], state["round"], state["window"]
        self.arms = [Arm(**a) for a in state["arms"]]
        self.curve = BestSoFar([tuple(p) for p in state["curve"]])
        self.retirements = state["retirements"]
        self.rng.bit_generator.state = state["rng"]
        self.ctx.target.counter.load_state_dict(state["target_counter"])
        if state["llm_counter"] is not None:
            self.ctx.llm.counter.load_state_dict(state["llm_counter"])
        return True

    # ------------------------------------------------------------------ bandit

    @property
    def active(self) -> list[Arm]:
        return [a for a in self.arms if a.active]

    def best(self) -> Arm:
        arms = self.active
        return arms[best_index([a.mean for a in arms], [a.plays for a in arms])]

    def play(self) -> None:
        """One Thompson step: posterior draw per arm, argmax plays one training scenario."""
        arms = self.active
        arm = arms[thompson_choice(self.rng, [(a.alpha, a.beta) for a in arms])]
        scenario = self.ctx.train[int(self.rng.integers(len(self.ctx.train)))]
        raw = self.ctx.mean_reward(arm.prompt, [scenario])
        arm.update(self.ctx.normalize(raw))
        arm.reward_sum += raw
        self.window.append(raw)
        self.t += 1

    def retire(self) -> None:
        arms = self.active
        best = arms.index(self.best())
        for i, p in retirements([(a.alpha, a.beta) for a in arms], best, self.cfg.retire_threshold):
            arms[i].retired_at = self.t
            self.retirements.append({"t": self.t, "prompt": arms[i].prompt, "p_beats_best": p})

    def refill(self) -> None:
        """Mutations of the best prompt until the portfolio is full (or the LLM gives nothing new)."""
        missing = self.cfg.portfolio_size - len(self.active)
        if missing <= 0:
            return
        best = self.best()
        prompt = MUTATE.format(role=self.ctx.task.assistant_role, prompt=best.prompt)
        base_seed = self.ctx.run.seed * 1_000_003 + self.round * 1_009
        replies = self.ctx.llm.sample(prompt, [base_seed + i for i in range(missing + 2)])
        seen = {normalize(a.prompt) for a in self.arms}
        mutants = filter_candidates(
            [extract_instruction(r) for r in replies],
            seen,
            self.cfg.min_prompt_chars,
            self.cfg.max_prompt_chars,
        )[:missing]
        alpha, beta = mutant_prior(best.mean, best.plays, self.cfg.prior_ess_min, self.cfg.prior_ess_frac)
        for text in mutants:
            self.arms.append(Arm(text, alpha, beta, origin="mutant", born=self.t))

    def close_window(self) -> None:
        if self.window:
            self.curve.add(self.ctx.target.counter.calls, float(np.mean(self.window)))
            self.window = []

    def run(self) -> OptimizerResult:
        if not self.load():
            task = self.ctx.task
            seen: set[str] = set()
            for text in [task.base_instruction, *task.seed_prompts]:
                if normalize(text) not in seen:
                    seen.add(normalize(text))
                    self.arms.append(Arm(text))
        budget = self.cfg.budget
        # Cache hits are free plays, so cap plays too: `steps` without a budget, else 4 × budget.
        max_plays = self.cfg.steps if budget is None else 4 * budget
        try:
            while self.t < max_plays:
                self.play()
                if self.t % self.cfg.retire_every == 0:
                    self.close_window()
                    self.retire()
                    self.refill()
                    self.round += 1
                    self.save()
        except BudgetExhausted as err:
            log.info("bandit stops after %d plays: %s", self.t, err)
        self.close_window()
        self.save()
        # The final pick prefers arms with evidence: an unplayed arm's mean is only its prior.
        best = max(self.active, key=lambda a: (a.plays > 0, a.mean))
        prompts = self.ctx.document(
            "bandit", PromptEntry(best.prompt, best.prompt), source_model=self.cfg.optimizer_model
        )
        return self.ctx.result(
            "bandit",
            prompts,
            self.curve.points,
            plays=self.t,
            arms=len(self.arms),
            retired=len(self.retirements),
            mutants=sum(a.origin == "mutant" for a in self.arms),
            best_posterior_mean=best.mean,
            best_plays=best.plays,
            best_train_reward=best.reward_sum / best.plays if best.plays else math.nan,
        )
