"""Baselines every learned method must beat, behind the same optimizer protocol.

- `manual`: the task's hand-written base instruction, unchanged.
- `template`: a rule-based static prompt per context from the task's preferred components
  (persona / stage / urgency → phrases, `Task.preferred_for`), assembled like PPO's prompts.
- `random`: random search over K word tokens drawn uniformly from the token policy's allowed-token
  mask, assembled like PPO's prompts; the best on the training subset is kept. It answers
  "does the policy learn anything a lottery over the same action set would not find?".

Each scores its prompt(s) on the training subset too (within the budget), so it has a point on
the learning-curve plot; an exhausted budget only skips that score.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch

from rlprompt.env.prompting import assemble_system_prompt
from rlprompt.optimizers.base import (
    BestSoFar,
    OptimizerContext,
    OptimizerResult,
    PromptSearchConfig,
    register_optimizer,
)
from rlprompt.prompt_set import PromptEntry, context_key
from rlprompt.targets.cache import BudgetExhausted
from rlprompt.task import Scenario

log = logging.getLogger(__name__)


@dataclass
class ManualConfig(PromptSearchConfig):
    name: str = "manual"


@dataclass
class TemplateConfig(PromptSearchConfig):
    name: str = "template"


@dataclass
class RandomConfig(PromptSearchConfig):
    name: str = "random"
    steps: int = 80  # candidates without a budget


@register_optimizer("manual", ManualConfig)
class Manual:
    def __init__(self, ctx: OptimizerContext) -> None:
        self.ctx = ctx

    def run(self) -> OptimizerResult:
        text = self.ctx.task.base_instruction
        curve = BestSoFar()
        try:
            reward = self.ctx.mean_reward(text, self.ctx.score_subset())
            curve.add(self.ctx.target.counter.calls, reward)
        except BudgetExhausted as err:
            log.info("manual: no training score (%s)", err)
        prompts = self.ctx.document(
            "manual", PromptEntry(text, text), source_model="hand-written", prompt_template="{base}"
        )
        return self.ctx.result("manual", prompts, curve.points)


@register_optimizer("template", TemplateConfig)
class Template:
    def __init__(self, ctx: OptimizerContext) -> None:
        self.ctx = ctx

    def entry(self, names: list[str]) -> PromptEntry:
        task = self.ctx.task
        index = {c.name: i for i, c in enumerate(task.components)}
        ids = sorted(index[n] for n in names)
        learned = " ".join(task.components[i].phrase for i in ids)
        return PromptEntry(learned, self.system(learned), ids)

    def system(self, learned: str) -> str:
        return assemble_system_prompt(self.ctx.task.base_instruction, learned, self.ctx.run.prompt)

    def run(self) -> OptimizerResult:
        task = self.ctx.task
        per_context = {
            context_key(c): self.entry(task.preferred_for(Scenario.for_context(c))) for c in task.contexts
        }
        # Task-level: the components preferred in the most contexts, at most max_components.
        votes = Counter(n for c in task.contexts for n in task.preferred_for(Scenario.for_context(c)))
        task_level = self.entry([n for n, _ in votes.most_common(task.max_components)])
        curve = BestSoFar()
        subset = self.ctx.score_subset()
        try:
            prompts = [per_context[context_key(s.context)].system_prompt for s in subset]
            reward = float(self.ctx.score(prompts, subset).total.mean())
            curve.add(self.ctx.target.counter.calls, reward)
        except BudgetExhausted as err:
            log.info("template: no training score (%s)", err)
        usage = Counter(task.components[i].name for e in per_context.values() for i in e.action_ids)
        document = self.ctx.document(
            "template",
            task_level,
            per_context,
            action_space="components",
            source_model="rules",
            prompt_template=self.ctx.run.prompt.template,
        )
        return self.ctx.result("template", document, curve.points, usage=dict(usage))


@register_optimizer("random", RandomConfig)
class RandomTokens:
    def __init__(self, ctx: OptimizerContext) -> None:
        self.ctx, self.cfg = ctx, ctx.cfg

    def run(self) -> OptimizerResult:
        from rlprompt.models import load_tokenizer
        from rlprompt.policy.action_spaces import allowed_token_mask

        policy = self.ctx.run.policy
        tokenizer = load_tokenizer(policy.backbone)
        allowed = allowed_token_mask(tokenizer, policy.allowed_tokens, len(tokenizer)).nonzero().squeeze(-1)
        generator = torch.Generator().manual_seed(self.ctx.run.seed)
        subset = self.ctx.score_subset()
        budget = self.cfg.budget
        n_candidates = max(1, self.cfg.steps if budget is None else budget // max(len(subset), 1))
        curve, best = BestSoFar(), None
        for _ in range(n_candidates):
            ids = allowed[torch.randint(len(allowed), (policy.prompt_length,), generator=generator)]
            learned = tokenizer.decode(ids.tolist(), skip_special_tokens=True).strip()
            system = assemble_system_prompt(self.ctx.task.base_instruction, learned, self.ctx.run.prompt)
            entry = PromptEntry(learned, system, ids.tolist())
            try:
                reward = self.ctx.mean_reward(system, subset)
            except BudgetExhausted as err:
                log.info("random: stops (%s)", err)
                best = best or (float("nan"), entry)
                break
            curve.add(self.ctx.target.counter.calls, reward)
            if best is None or reward > best[0]:
                best = (reward, entry)
        assert best is not None
        prompts = self.ctx.document(
            "random",
            best[1],
            action_space="tokens",
            source_model="uniform over allowed tokens",
            prompt_template=self.ctx.run.prompt.template,
        )
        usage = dict(Counter(best[1].text.split()))
        return self.ctx.result("random", prompts, curve.points, candidates=len(curve.points), usage=usage)
