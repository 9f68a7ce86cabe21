"""The prompt policy: a frozen causal LM plus a small trainable head writes K discrete actions.

RLPrompt (Deng et al. 2022, https://github.com/mingkaid/rl-prompt) puts an MLP
`Linear(d, 2048) → ReLU → Linear(2048, d)` on the frozen LM's last hidden state and reads the
result through the frozen LM head. `residual_mlp` adds the MLP to the hidden state with its last
layer zero-initialised, so training starts exactly at the frozen LM's distribution (readable
prompts from step 0); `lora` adapts the backbone itself through peft instead.

Because the backbone is frozen, its hidden state at each action position depends only on the
tokens, never on the head: the rollout caches them (B, K, d) and every PPO epoch re-runs only the
head — milliseconds instead of a forward pass of the LM.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from rlprompt.config import PolicyConfig
from rlprompt.errors import ConfigError
from rlprompt.policy.action_spaces import ACTION_SPACES, ActionSpace, SentenceEnd, check_policy
from rlprompt.task import Task

MASKED = -1e9  # finite "minus infinity": keeps softmax/entropy free of NaN


class MLPHead(nn.Module):
    """RLPrompt's head; `residual=True` → h + mlp(h) with the last layer zero-initialised."""

    def __init__(self, dim: int, hidden: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        if residual:
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(h) if self.residual else self.mlp(h)


@dataclass
class Rollout:
    """What the policy wrote, with everything PPO needs to re-score it without the backbone."""

    context_texts: list[str]  # (B,) what the policy read
    actions: torch.Tensor  # (B, K) action ids (token ids or component indices)
    logprobs: torch.Tensor  # (B, K) log π_old(a_t | s_t) under the full (masked) distribution
    hidden: torch.Tensor  # (B, K, d) frozen backbone state before each action
    prompts: list[str]  # (B,) decoded learned prompts

    def __len__(self) -> int:
        return len(self.prompts)


class PromptPolicy(nn.Module):
    """Frozen backbone + trainable head + an action space (tokens or phrase-bank components)."""

    def __init__(self, cfg: PolicyConfig, task: Task, backbone, tokenizer) -> None:
        super().__init__()
        check_policy(cfg)  # e.g. head=lora needs action_space=tokens: refuse before touching the model
        self.cfg = cfg
        self.task = task
        self.tokenizer = tokenizer
        self.backbone = backbone.requires_grad_(False).eval()
        dim = backbone.config.hidden_size
        if cfg.head == "lora":
            self.backbone = _with_lora(backbone, cfg)
            self.head = nn.Identity()
        elif cfg.head in ("mlp", "residual_mlp"):
            self.head = MLPHead(dim, cfg.hidden_size, residual=cfg.head == "residual_mlp")
        else:
            raise ConfigError(f"unknown policy.head '{cfg.head}'. Valid heads: lora, mlp, residual_mlp")
        self.actions: ActionSpace = ACTION_SPACES.get(cfg.action_space)(cfg, task, backbone, tokenizer)
        self.head.to(self.backbone.device)
        # π_init for the KL penalty: a frozen copy of the head as it starts.
        self.ref_head = copy.deepcopy(self.head).requires_grad_(False)

    # ------------------------------------------------------------------ prefixes

    def prefix_text(self, context: str) -> str:
        text = self.cfg.prefix_template.format(
            role=self.task.assistant_role, product=self.task.product, context=context
        )
        if self.cfg.prefix_chat and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        else:
            text += "\n"
        return text + self.cfg.answer_start + (f" {self.cfg.prompt_lead}" if self.cfg.prompt_lead else "")

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self, context_texts: list[str], greedy: bool = False, generator: torch.Generator | None = None
    ) -> Rollout:
        """Write one prompt per context text: top-k sampling in training, greedy at inference."""
        hidden, actions, logprobs = [], [], []
        state = self.actions.start([self.prefix_text(c) for c in context_texts])
        for _ in range(self.cfg.prompt_length):
            h = state.hidden  # (B, d)
            logits = self.actions.mask_logits(self._logits(self.head, h), state)  # (B, A)
            action = _choose(logits, greedy, self.cfg.top_k, generator)
            hidden.append(h)
            actions.append(action)
            logprobs.append(torch.log_softmax(logits, -1).gather(-1, action[:, None]).squeeze(-1))
            state = self.actions.advance(state, action)
        actions_t = torch.stack(actions, 1)
        return Rollout(
            context_texts=list(context_texts),
            actions=actions_t,
            logprobs=torch.stack(logprobs, 1).float(),
            hidden=torch.stack(hidden, 1).float(),
            prompts=[self.decode(row) for row in actions_t],
        )

    def decode(self, actions: torch.Tensor) -> str:
        """The learned prompt as text: `prompt_lead` (if any) + the decoded actions."""
        text = self.actions.decode(actions)
        if not self.cfg.prompt_lead:
            return text
        joint = "" if text.startswith("'") else " "  # "I" + "'m happy ..." -> "I'm happy ..."
        return f"{self.cfg.prompt_lead}{joint}{text}".strip()

    # ------------------------------------------------------------------ scoring for PPO

    def action_logits(self, rollout: Rollout, reference: bool = False) -> torch.Tensor:
        """Masked logits (B, K, A) at every action position; differentiable unless `reference`."""
        head = self.ref_head if reference else self.head
        if self.cfg.head == "lora":
            hidden = self._lora_hidden(rollout, reference)
        else:
            hidden = rollout.hidden
        logits = self._logits(head, hidden)
        return self.actions.mask_sequence(logits, rollout.actions)

    def _logits(self, head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return self.actions.output(head(hidden.float()))

    def _lora_hidden(self, rollout: Rollout, reference: bool) -> torch.Tensor:
        """LoRA changes the backbone, so its states are recomputed (teacher-forced) every time."""
        if reference:
            with self.backbone.disable_adapter(), torch.no_grad():
                return self._teacher_forced(rollout)
        return self._teacher_forced(rollout)

    def _teacher_forced(self, rollout: Rollout) -> torch.Tensor:
        prefixes = [self.prefix_text(c) for c in rollout.context_texts]
        return self.actions.teacher_forced_hidden(self.backbone, prefixes, rollout.actions).float()

    def sentence_end(self, action_ids: list[int], context: str) -> SentenceEnd:
        """How the prompt's sentence ends under the *initial* policy: the period's probability
        where it ends, the sentence's fluency, and its version ended earlier.

        The initial policy is the frozen language model (a zero residual head, or LoRA switched
        off), so this asks whether the sentence is finished and natural English, not whether
        training came to like it. Selection passes over prompts below `eval.min_end_probability`,
        lets their trimmed versions compete ("... in the right direction and." → "... in the right
        direction."), and prefers the more fluent of near-ties on val (`eval.fluent_within_se`).
        """
        adapter_off = self.backbone.disable_adapter() if self.cfg.head == "lora" else contextlib.nullcontext()
        with adapter_off:
            return self.actions.sentence_end(self.ref_head, self.prefix_text(context), action_ids)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes: the head (or the LoRA weights)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("head.") or "lora_" in k}


def _choose(
    logits: torch.Tensor, greedy: bool, top_k: int, generator: torch.Generator | None
) -> torch.Tensor:
    if greedy:
        return logits.argmax(-1)
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, MASKED)
    probs = torch.softmax(logits.float(), -1).cpu()  # the (CPU) generator makes runs reproducible
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


def _with_lora(backbone, cfg: PolicyConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=["q_proj", "v_proj"], lora_dropout=0.0
    )
    model = get_peft_model(backbone, lora)
    model.eval()
    return model
