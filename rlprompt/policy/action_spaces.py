"""Action spaces of the prompt policy, behind one small interface and a registry.

- `tokens`: RLPrompt's — the vocabulary, read through the frozen LM head, optionally masked to
  readable word tokens; the backbone advances with its KV cache, one token per step.
- `components`: the component-selection design — the task's phrase bank. A component's logit is
  the head's state read through the mean LM-head row of the phrase's tokens (the same scale as a
  token logit); chosen components are masked so a prompt never repeats one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from rlprompt.config import PolicyConfig
from rlprompt.errors import ConfigError
from rlprompt.models import context_window
from rlprompt.registry import Registry
from rlprompt.targets.base import InputTooLong
from rlprompt.task import Task

MASKED = -1e9
PERIOD = "."  # `policy.end_with_period`: the token that ends a rule
MIN_TOKENS_BEFORE_PERIOD = 3  # "Always ask." is no rule
ACTION_SPACES: Registry = Registry("action space")


@dataclass
class BackboneState:
    hidden: torch.Tensor  # (B, d) last-layer state at the last position
    mask: torch.Tensor  # (B, L) attention mask so far
    past: Any = None  # KV cache (tokens)
    chosen: list[list[int]] = field(default_factory=list)  # actions so far, per row
    prefix_texts: list[str] = field(default_factory=list)
    step: int = 0  # actions taken so far
    ended: torch.Tensor | None = None  # (B,) bool: the row has written its period (tokens)


@dataclass
class SentenceEnd:
    """How a prompt's sentence ends, read off the initial policy (selection's hand-off)."""

    probability: float  # p(period) where the sentence ends, unforced; 1.0 without a period
    fluency: float  # mean log-prob per token of its words and period (0.0 without a period)
    trimmed: list[int]  # (K,) the words ended at the likeliest earlier position, or the ids unchanged


class ActionSpace(Protocol):
    cacheable_hidden: bool

    def start(self, prefix_texts: list[str]) -> BackboneState: ...
    def advance(self, state: BackboneState, action: torch.Tensor) -> BackboneState: ...
    def output(self, h: torch.Tensor) -> torch.Tensor: ...
    def mask_logits(self, logits: torch.Tensor, state: BackboneState) -> torch.Tensor: ...
    def mask_sequence(self, logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor: ...
    def decode(self, actions: torch.Tensor) -> str: ...
    def sentence_end(self, head: Callable, prefix_text: str, action_ids: list[int]) -> SentenceEnd: ...


def check_policy(cfg: PolicyConfig) -> None:
    """Cross-field policy checks that need no model (start-up: scripts, comparison plans, the policy).

    `policy.head=lora` changes the backbone, so every PPO update recomputes the states
    teacher-forced (`teacher_forced_hidden`); an action space without it would fail only at the
    first update.
    """
    space = ACTION_SPACES.get(cfg.action_space)  # unknown name: the error lists the valid ones
    if cfg.head == "lora" and not callable(getattr(space, "teacher_forced_hidden", None)):
        raise ConfigError(
            f"policy.head=lora cannot be combined with policy.action_space={cfg.action_space}: LoRA "
            "changes the backbone, so PPO recomputes its states teacher-forced, which only "
            "policy.action_space=tokens supports. Use policy.action_space=tokens (policy=lora), or keep "
            f"policy.action_space={cfg.action_space} with policy.head=mlp or policy.head=residual_mlp"
        )


def encode_prefixes(
    tokenizer, texts: list[str], limit: int | None = None, positions_after: int = 0
) -> dict[str, torch.Tensor]:
    """Left-padded ids; BOS added unless the (chat-templated) text already starts with it.

    `limit`: most tokens a prefix may have (the backbone's context window less the `positions_after`
    still to come); a longer one is refused before the backbone runs, naming it, its length and the fix.
    """
    bos = tokenizer.bos_token
    add_special = not (bos and all(t.startswith(bos) for t in texts))
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
    if limit is not None:
        for i, n in enumerate(enc["attention_mask"].sum(dim=1).tolist()):
            if n > limit:
                raise InputTooLong(
                    f"policy prefix {i + 1} of {len(texts)} is {n} tokens, over the {limit} the policy "
                    f"backbone can read (its context window of {limit + positions_after} tokens less the "
                    f"{positions_after} it still writes); shorten policy.prefix_template (or the task's "
                    "role, product or context texts)"
                )
    return enc


def prefix_limit(backbone, positions_after: int) -> int | None:
    """Most prefix tokens: the backbone's context window less the `positions_after` still to come."""
    window = context_window(backbone)
    return None if window is None else window - positions_after


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding, so a padded row sees what an unpadded one would."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def _forward(backbone, ids: torch.Tensor, mask: torch.Tensor, past=None, positions=None):
    """Last-layer states (after the final norm) and the KV cache, without the LM head.

    The decoder alone is enough: the policy reads states, and skipping the vocabulary projection
    of every prefix position saves time and, for a 72-context batch, gigabytes of peak memory.
    """
    out = backbone.get_decoder()(
        input_ids=ids.to(backbone.device),
        attention_mask=mask.to(backbone.device),
        position_ids=(positions if positions is not None else position_ids(mask)[:, -ids.shape[1] :]).to(
            backbone.device
        ),
        past_key_values=past,
        use_cache=past is not None or ids.shape[1] > 0,
    )
    return out.last_hidden_state, out.past_key_values  # (B, T, d) after the final norm


@ACTION_SPACES.register("tokens")
class TokenActions:
    """Vocabulary actions; `allowed_tokens` keeps prompts readable (`words`) or printable."""

    cacheable_hidden = True

    def __init__(self, cfg: PolicyConfig, task: Task, backbone, tokenizer) -> None:
        self.backbone, self.tokenizer = backbone, tokenizer
        # float32 copy of the frozen LM head: the trainable head runs in float32 even on a bf16 backbone
        self.output_weight = backbone.get_output_embeddings().weight.detach().float()  # (V, d)
        allowed = allowed_token_mask(tokenizer, cfg.allowed_tokens, self.output_weight.shape[0])
        if int(allowed.sum()) < max(cfg.top_k, 2):
            raise ConfigError(
                f"policy.allowed_tokens={cfg.allowed_tokens} leaves {int(allowed.sum())} tokens"
            )
        self.stop_id: int | None = None
        if cfg.end_with_period:
            self.stop_id = int(tokenizer.convert_tokens_to_ids(PERIOD))
            allowed = allowed.clone()  # the word mask is cached and shared
            allowed[self.stop_id] = True
        self.bias = torch.where(allowed, 0.0, MASKED)  # (V,)
        self.prompt_length = cfg.prompt_length

    def start(self, prefix_texts: list[str]) -> BackboneState:
        K = self.prompt_length
        enc = encode_prefixes(self.tokenizer, prefix_texts, prefix_limit(self.backbone, K), K)
        hidden, past = _forward(self.backbone, enc["input_ids"], enc["attention_mask"], past=_new_cache())
        ended = torch.zeros(len(prefix_texts), dtype=torch.bool)
        return BackboneState(
            hidden=hidden[:, -1],
            mask=enc["attention_mask"],
            past=past,
            prefix_texts=prefix_texts,
            ended=ended,
        )

    def advance(self, state: BackboneState, action: torch.Tensor) -> BackboneState:
        mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], dim=1)
        hidden, past = _forward(self.backbone, action[:, None], mask, past=state.past)
        ended = state.ended  # set by `start`
        if self.stop_id is not None:
            ended = ended | (action.cpu() == self.stop_id)
        return BackboneState(
            hidden=hidden[:, -1],
            mask=mask,
            past=past,
            prefix_texts=state.prefix_texts,
            step=state.step + 1,
            ended=ended,
        )

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.output_weight.T

    def mask_logits(self, logits: torch.Tensor, state: BackboneState) -> torch.Tensor:
        logits = logits + self.bias.to(logits.device)  # (B, V)
        if self.stop_id is None:
            return logits
        positions = torch.full((len(logits), 1), state.step)
        return self._stop_masks(logits[:, None], positions, state.ended[:, None])[:, 0]

    def mask_sequence(self, logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        logits = logits + self.bias.to(logits.device)  # (B, K, V)
        if self.stop_id is None:
            return logits
        stops = (actions == self.stop_id).long().cpu()  # (B, K)
        ended = (torch.cumsum(stops, dim=1) - stops) > 0  # a period came before position t
        positions = torch.arange(actions.shape[1]).expand_as(actions)  # (B, K)
        return self._stop_masks(logits, positions, ended)

    def _stop_masks(self, logits: torch.Tensor, positions: torch.Tensor, ended: torch.Tensor) -> torch.Tensor:
        """(B, K, V) logits with the period barred before `MIN_TOKENS_BEFORE_PERIOD`, forced after it,
        and forced at the last position: a rule that has not ended by then ends there, so no
        prompt.txt ships a rule cut off mid-phrase ("... and the most", seed 0 of stop 19)."""
        device = logits.device
        early = (positions < MIN_TOKENS_BEFORE_PERIOD).to(device)  # (B, K)
        last = (positions >= self.prompt_length - 1).to(device)  # (B, K)
        stop_column = logits[..., self.stop_id]
        logits = logits.clone()
        logits[..., self.stop_id] = torch.where(early, torch.full_like(stop_column, MASKED), stop_column)
        forced = torch.full_like(logits[0, 0], MASKED)
        forced[self.stop_id] = 0.0
        return torch.where((ended.to(device) | last)[..., None], forced, logits)

    @torch.no_grad()
    def sentence_end(self, head: Callable, prefix_text: str, action_ids: list[int]) -> SentenceEnd:
        """The period's probability where the sentence ends, under `head` on the frozen backbone
        and unforced; the sentence's fluency; and the ids ended instead at the earlier position
        the model likes best (unchanged when none beats the actual end).

        The action ids alone cannot tell "... the right car for you." (a sentence that ends at the
        last position, where the period is forced) from "... at all of the." (cut there), nor a
        sampled period that closes a phrase mid-way ("I can help alleviate your vehicle dep.") from
        one that ends it. The language model can, and it says where a cut sentence could have ended.
        """
        if self.stop_id is None or self.stop_id not in action_ids:
            return SentenceEnd(1.0, 0.0, action_ids)
        actions = torch.tensor([action_ids], device=self.backbone.device)
        hidden = self.teacher_forced_hidden(self.backbone, [prefix_text], actions)[0]  # (K, d)
        logits = self.output(head(hidden.float())) + self.bias.to(hidden.device)  # (K, V)
        logprobs = torch.log_softmax(logits.float(), -1)  # (K, V), the period unforced
        where = action_ids.index(self.stop_id)
        period = logprobs[:, self.stop_id].exp().tolist()  # p(period) at each position
        chosen = logprobs[
            torch.arange(where + 1, device=logprobs.device), actions[0, : where + 1]
        ]  # (where + 1,)
        earlier = range(MIN_TOKENS_BEFORE_PERIOD, where)  # the period is barred before MIN_TOKENS
        best = max(earlier, key=period.__getitem__, default=where)
        trimmed = action_ids
        if period[best] > period[where]:
            trimmed = action_ids[:best] + [self.stop_id] * (len(action_ids) - best)
        return SentenceEnd(period[where], float(chosen.mean()), trimmed)

    def decode(self, actions: torch.Tensor) -> str:
        ids = actions.tolist()
        if self.stop_id is not None and self.stop_id in ids:
            ids = ids[: ids.index(self.stop_id) + 1]  # the rule ends at its period
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def teacher_forced_hidden(self, backbone, prefix_texts: list[str], actions: torch.Tensor) -> torch.Tensor:
        """States before each action, recomputed in one pass (for adapters that change the backbone)."""
        enc = encode_prefixes(self.tokenizer, prefix_texts)  # on the CPU
        device = backbone.device
        actions = actions.to(device)
        ids = torch.cat([enc["input_ids"].to(device), actions[:, :-1]], dim=1)
        mask = torch.cat([enc["attention_mask"].to(device), torch.ones_like(actions[:, :-1])], dim=1)
        out = backbone(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True
        )
        k = actions.shape[1]
        return out.hidden_states[-1][:, -k:]


@ACTION_SPACES.register("components")
class ComponentActions:
    """Phrase-bank actions: K distinct components, joined in bank order as the learned prompt."""

    cacheable_hidden = True

    def __init__(self, cfg: PolicyConfig, task: Task, backbone, tokenizer) -> None:
        if cfg.prompt_length > min(task.max_components, len(task.components)):
            raise ConfigError(
                f"policy.prompt_length={cfg.prompt_length} but task '{task.name}' allows at most "
                f"{min(task.max_components, len(task.components))} components (max_components)"
            )
        self.backbone, self.tokenizer, self.task = backbone, tokenizer, task
        lm_head = backbone.get_output_embeddings().weight.detach().float()  # (V, d)
        rows = []
        for component in task.components:
            ids = tokenizer(
                " " + component.name.replace("_", " ") + ": " + component.phrase, add_special_tokens=False
            )
            rows.append(lm_head[torch.tensor(ids["input_ids"])].mean(0))
        self.embeddings = torch.stack(rows)  # (N, d)

    def _run(self, prefix_texts: list[str], chosen: list[list[int]]) -> BackboneState:
        # Phrases differ in length, so each step re-reads prefix + chosen names (short, cheap).
        texts = [
            p + "".join(" " + self.task.components[c].name.replace("_", " ") + "," for c in row)
            for p, row in zip(prefix_texts, chosen)
        ]
        enc = encode_prefixes(self.tokenizer, texts, prefix_limit(self.backbone, 0))
        hidden, _ = _forward(self.backbone, enc["input_ids"], enc["attention_mask"])
        return BackboneState(
            hidden=hidden[:, -1], mask=enc["attention_mask"], chosen=chosen, prefix_texts=prefix_texts
        )

    def start(self, prefix_texts: list[str]) -> BackboneState:
        return self._run(prefix_texts, [[] for _ in prefix_texts])

    def advance(self, state: BackboneState, action: torch.Tensor) -> BackboneState:
        return self._run(state.prefix_texts, [[*row, int(a)] for row, a in zip(state.chosen, action)])

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.embeddings.T

    def mask_logits(self, logits: torch.Tensor, state: BackboneState) -> torch.Tensor:
        mask = torch.zeros_like(logits)
        for i, row in enumerate(state.chosen):
            mask[i, row] = MASKED
        return logits + mask

    def mask_sequence(self, logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        n = logits.shape[-1]
        taken = torch.nn.functional.one_hot(actions, n).to(logits.dtype)  # (B, K, N)
        before = torch.cumsum(taken, dim=1) - taken  # components chosen before step t
        return logits + before.clamp(max=1) * MASKED

    def sentence_end(self, head: Callable, prefix_text: str, action_ids: list[int]) -> SentenceEnd:
        """A set of whole components has no sentence to end."""
        return SentenceEnd(1.0, 0.0, action_ids)

    def decode(self, actions: torch.Tensor) -> str:
        chosen = sorted(set(actions.tolist()))
        return " ".join(self.task.components[i].phrase for i in chosen)

    def names(self, actions: torch.Tensor) -> list[str]:
        return [self.task.components[i].name for i in sorted(set(actions.tolist()))]


def _new_cache():
    from transformers import DynamicCache

    return DynamicCache()


_MASK_CACHE: dict[tuple[str, str, int], torch.Tensor] = {}
# Contraction endings: BPE writes "don't" as " don" + "'t". Without them a `words` rule came out
# as "Always avoid details that they don for themselves." (stop 20, seed 1).
CONTRACTIONS = ("'t", "'s", "'re", "'ll", "'ve", "'d", "'m")


def allowed_token_mask(tokenizer, mode: str, vocab_size: int) -> torch.Tensor:
    """Bool (V,) of tokens the policy may write.

    all: every non-special token; printable: decodes to visible text without control characters;
    words: word-initial alphabetic ASCII tokens and contraction endings ("'t"): readable prompts.
    """
    key = (getattr(tokenizer, "name_or_path", ""), mode, vocab_size)
    if key in _MASK_CACHE:
        return _MASK_CACHE[key]
    if mode not in ("all", "printable", "words"):
        raise ConfigError(f"unknown policy.allowed_tokens '{mode}'. Valid: all, printable, words")
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            continue
        if mode == "all":
            allowed[i] = True
        elif mode == "printable":
            text = tokenizer.decode([i])
            allowed[i] = bool(text.strip()) and text.isprintable()
        else:
            body = piece[1:] if piece[:1] in ("Ġ", "▁") else None
            word = body is not None and len(body) >= 2 and body.isascii() and body.isalpha()
            allowed[i] = word or tokenizer.decode([i]) in CONTRACTIONS
    _MASK_CACHE[key] = allowed
    return allowed
