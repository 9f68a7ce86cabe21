"""Evolution on live traffic: retire the losers, breed the winner, screen the offspring offline.

Every `serve.evolve_every` feedback events, one round (in a background thread, so no request
waits on the optimizer LLM):
1. retire each active arm whose P(beats the best) < `optimizer.retire_threshold` (exact quadrature,
   bandit_math.retirements) — the offline bandit's rule on the global posteriors;
2. refill to `optimizer.portfolio_size` with rewrites of the best arm by the optimizer LLM
   (the offline bandit's MUTATE prompt, extraction and de-duplication);
3. screen each mutant before it gets any traffic: guardrails on its text, then played on
   `serve.screen_scenarios` training scenarios through the target, its replies checked by the
   guardrails and scored by the reward modules; it must score within `serve.screen_margin` of its
   parent on the same scenarios. Survivors join with the offline bandit's mutant prior.
Every decision is an `evolution` row (retired / born / screened_out with the reason). A round
number is claimed by inserting its row, so with several replicas exactly one runs each round.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa

from rlprompt.build import generation_params
from rlprompt.env.conversation import run_conversations
from rlprompt.optimizers.bandit import MUTATE
from rlprompt.optimizers.bandit_math import best_index, mutant_prior, posterior_mean, retirements
from rlprompt.optimizers.llm import extract_instruction, filter_candidates, normalize
from rlprompt.serve import guardrails, store
from rlprompt.serve.portfolio import ArmSpec, Counts, insert_arms, read_snapshot

if TYPE_CHECKING:
    from rlprompt.serve.gateway import Gateway

log = logging.getLogger(__name__)


@dataclass
class Screening:
    text: str
    passed: bool
    reason: str
    reward: float | None = None  # mean raw reward on the screening scenarios


@dataclass
class RoundReport:
    round: int
    retired: list[int] = field(default_factory=list)
    born: list[int] = field(default_factory=list)
    screened_out: list[Screening] = field(default_factory=list)


class Evolver:
    """Runs evolution rounds for one gateway (at most one at a time per process)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.every = gateway.cfg.evolve_every
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.last_round = gateway.portfolio.feedback_total // self.every if self.every else 0
        self.reports: list[RoundReport] = []
        self.limits = guardrails.Limits(
            banned_phrases=tuple(gateway.cfg.banned_phrases),
            min_prompt_chars=gateway.run.optimizer.min_prompt_chars,
            max_prompt_chars=gateway.run.optimizer.max_prompt_chars,
            max_reply_words=gateway.cfg.max_reply_words,
        )
        for name in gateway.cfg.guardrails:
            guardrails.GUARDRAILS.get(name)  # an unknown name fails at start-up, listing the valid ones

    def on_feedback(self, total: int) -> None:
        """Called after each committed feedback event (writer thread): start a due round."""
        if not self.every or total // self.every <= self.last_round:
            return
        self.last_round = total // self.every
        if self.thread is not None and self.thread.is_alive():
            return  # a round is running; the next trigger starts the next one
        self.thread = threading.Thread(
            target=self._safe_round, args=(self.last_round, total), name="rlprompt-evolution", daemon=True
        )
        self.thread.start()

    def wait(self, timeout: float | None = 600) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _safe_round(self, number: int, total: int) -> None:
        try:
            self.run_round(number, total)
        except Exception:
            log.exception("evolution round %d failed", number)

    # ------------------------------------------------------------------ one round

    def run_round(self, number: int, feedback_count: int) -> RoundReport | None:
        with self.lock:
            if not self.claim(number, feedback_count):
                return None
            report = RoundReport(number)
            gw, opt = self.gw, self.gw.run.optimizer
            snapshot = gw.writer.call(read_snapshot, after=gw.portfolio.load)
            counts: dict[int, Counts] = {i: Counts() for i in snapshot.arms}
            for (arm_id, _), c in snapshot.counts.items():
                counts[arm_id].add(c.nano, c.n)
            active = [a for a in snapshot.arms.values() if a.active]
            params = [counts[a.id].posterior(a.prior_alpha, a.prior_beta) for a in active]
            best_i = best_index([posterior_mean(*p) for p in params], [counts[a.id].n for a in active])
            best = active[best_i]
            for i, p in retirements(params, best_i, opt.retire_threshold):
                arm = active[i]
                reason = f"P(beats arm {best.id}) = {p:.4f} < {opt.retire_threshold}"
                self.record(number, "retired", arm.id, arm.text, reason, p_beats_best=p, retire=True)
                report.retired.append(arm.id)
            missing = opt.portfolio_size - (len(active) - len(report.retired))
            if missing > 0:
                seen = {normalize(a.text) for a in snapshot.arms.values()}
                mean, n_best = posterior_mean(*params[best_i]), counts[best.id].n
                prior = mutant_prior(mean, n_best, opt.prior_ess_min, opt.prior_ess_frac)
                # Candidates are screened in order until `missing` pass: a rejected one costs a
                # screening, never live traffic.
                for text in self.propose(best.text, missing, number, seen):
                    if len(report.born) >= missing:
                        break
                    result = self.screen(text, best.text)
                    if result.passed:
                        report.born.append(self.born(number, text, best.id, prior, result))
                    else:
                        self.record(
                            number, "screened_out", None, text, result.reason, screen_reward=result.reward
                        )
                        report.screened_out.append(result)
            self.finish(number)
            gw.writer.call(read_snapshot, after=gw.portfolio.load)
            self.reports.append(report)
            log.info(
                "evolution round %d: retired %s, born %s, screened out %d",
                number,
                report.retired,
                report.born,
                len(report.screened_out),
            )
            return report

    def claim(self, number: int, feedback_count: int) -> bool:
        def op(conn: sa.Connection) -> bool:
            t = store.evolution_rounds
            if conn.execute(sa.select(t.c.round).where(t.c.round == number)).first() is not None:
                return False
            conn.execute(
                t.insert().values(round=number, feedback_count=feedback_count, started_at=store.now())
            )
            return True

        try:
            return self.gw.writer.call(op)
        except sa.exc.IntegrityError:  # another replica inserted it between our check and insert
            return False

    def finish(self, number: int) -> None:
        t = store.evolution_rounds
        self.gw.writer.call(
            lambda conn: conn.execute(t.update().where(t.c.round == number).values(finished_at=store.now()))
        )

    def record(self, number: int, kind: str, arm_id: int | None, text: str, reason: str, **extra) -> None:
        retire = extra.pop("retire", False)

        def op(conn: sa.Connection) -> None:
            if retire:
                conn.execute(
                    store.arms.update()
                    .where(store.arms.c.id == arm_id)
                    .values(retired_at=store.now(), retired_reason=reason)
                )
            conn.execute(
                store.evolution.insert().values(
                    round=number,
                    kind=kind,
                    arm_id=arm_id,
                    text=text,
                    reason=reason,
                    created_at=store.now(),
                    **extra,
                )
            )

        self.gw.writer.call(op)

    def born(
        self, number: int, text: str, parent_id: int, prior: tuple[float, float], result: Screening
    ) -> int:
        spec = ArmSpec(text, f"mutant of arm {parent_id}", "mutant", None, parent_id, *prior)

        def op(conn: sa.Connection) -> int:
            insert_arms(conn, [spec])
            arm_id = conn.execute(sa.select(store.arms.c.id).where(store.arms.c.key == spec.key)).scalar()
            conn.execute(
                store.evolution.insert().values(
                    round=number,
                    kind="born",
                    arm_id=arm_id,
                    text=text,
                    reason=result.reason,
                    screen_reward=result.reward,
                    created_at=store.now(),
                )
            )
            return int(arm_id)

        return self.gw.writer.call(op)

    # ------------------------------------------------------------------ mutation + screening

    def propose(self, best_text: str, missing: int, number: int, seen: set[str]) -> list[str]:
        """Rewrites of the best prompt by the optimizer LLM, de-duplicated and length-filtered."""
        gw, opt = self.gw, self.gw.run.optimizer
        prompt = MUTATE.format(role=gw.task.assistant_role, prompt=best_text)
        base_seed = gw.run.seed * 1_000_003 + number * 1_009
        replies = gw.llm.sample(prompt, [base_seed + i for i in range(missing + 2)])
        texts = [extract_instruction(r) for r in replies]
        return filter_candidates(texts, seen, opt.min_prompt_chars, opt.max_prompt_chars)

    def screen(self, text: str, parent_text: str) -> Screening:
        """Guardrails on the text, then on its replies to the screening scenarios, then the reward."""
        gw, names = self.gw, self.gw.cfg.guardrails
        reason = guardrails.check(text, guardrails.PROMPT, names, self.limits)
        if reason is not None:
            return Screening(text, False, reason)
        from rlprompt.serve.gateway import screen_subset

        scenarios = screen_subset(gw.task, gw.cfg.screen_scenarios, gw.run.seed)
        params = generation_params(gw.run.target, gw.run.seed)
        with gw.slots:
            samples = run_conversations(
                gw.target, scenarios * 2, [text] * len(scenarios) + [parent_text] * len(scenarios), params
            )
        mine, parent = samples[: len(scenarios)], samples[len(scenarios) :]
        for sample in mine:
            reason = guardrails.check(sample.first_reply, guardrails.REPLY, names, self.limits)
            if reason is not None:
                return Screening(text, False, f"{reason} (scenario {sample.scenario.id})")
        totals = gw.reward.reward.score(mine + parent).total
        reward = float(np.mean(totals[: len(mine)].numpy()))
        parent_reward = float(np.mean(totals[len(mine) :].numpy()))
        if reward < parent_reward - gw.cfg.screen_margin:
            return Screening(
                text,
                False,
                f"reward: {reward:.3f} on {len(mine)} screening scenarios, under the parent's {parent_reward:.3f} "
                f"by more than serve.screen_margin={gw.cfg.screen_margin}",
                reward,
            )
        return Screening(text, True, f"passed: reward {reward:.3f} vs parent {parent_reward:.3f}", reward)
