"""A frozen chat LM reads each reply in its conversation: the features of the `preference` probe.

Hand-made features judge a reply sentence by sentence and miss what needs the conversation: that a
friendly question dodges the one the customer asked, that "sign today" is pressure at low urgency.
A language model that reads the customer's turn, the history and the reply has that context in its
hidden states. A linear probe on them, fit on expert pairs (Bradley-Terry), is the smallest reward
model there is: the recipe of RLHF reward models (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155)
with the LM frozen, so 1,000 pairs are enough. The figures, on pairs written blind, are in
docs/REWARDS.md (rounds 5 to 7).

The reply is read after the task's base instruction, never after the prompt that produced it: the
reward judges what the customer sees, and a prompt cannot raise it by its own wording.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from rlprompt.models import cache_root, load_model
from rlprompt.rewards.bradley_terry import fit_bradley_terry
from rlprompt.task import Scenario

READER_MODEL = "smollm2-135m-instruct"  # the target's own family: already on disk, chat template kept
READER_DTYPE = "bfloat16"  # 2x faster than float32 on CPU with avx512_bf16; the memo is keyed by it
# The memo on disk is keyed by this, the model, the dtype and the system prompt. Bump it when the
# vectors change (what is read, which layer, how it is pooled); a docstring edit need not recompute them.
READER_VERSION = 2
# Which hidden states are read: the output of decoder layer 20 of 30. Chosen by 4-fold CV over the
# 1,152 fit pairs, every second layer tried (docs/REWARDS.md, round 6): layer 20 97.8 %, the final
# (normed) states 95.4 %; middle layers carry more of what a reply means, the last ones more of what
# token comes next. Reading stops there, a third less compute than the full model.
READER_LAYER = 20
PROBE_L2 = 0.03  # on standardised states; 0.03 / 0.1 / 0.3 gave 97.8 / 97.1 / 96.7 % in the same CV
# One memo per file per process: every reward built in a run (a comparison builds eight) shares it,
# and the file is read once, not once per build. `_KEPT` names the keys that belong on disk (the
# pairs'): a run's target replies share the memo in memory but are never written to the file.
_MEMOS: dict[Path, dict[str, torch.Tensor]] = {}
_KEPT: dict[Path, set[str]] = {}
_HOOK_LOCK = threading.Lock()


@lru_cache(maxsize=2)
def _load(name: str, dtype: str):
    model, tokenizer = load_model(name, dtype, device="cpu")
    return model, tokenizer


class ReplyReader:
    """(N, H): the mean hidden state of layer `READER_LAYER` over each reply's tokens, read in context.

    Memoised in memory by (context, reply); `persist=True` also keeps the vectors on disk (the
    expert pairs: every run and test that fits the probe reads them instead of 1,000 LM passes).
    """

    def __init__(
        self, system_prompt: str, model: str = READER_MODEL, dtype: str = READER_DTYPE, batch_size: int = 16
    ) -> None:
        self.system_prompt = system_prompt
        self.model_name, self.dtype, self.batch_size = model, dtype, batch_size
        digest = hashlib.sha256(f"{READER_VERSION}|{model}|{dtype}|{system_prompt}".encode())
        self.file = cache_root() / "reader" / f"{digest.hexdigest()[:24]}.pt"
        if self.file not in _MEMOS:
            _MEMOS[self.file], _KEPT[self.file] = {}, set()
            if self.file.is_file():
                with contextlib.suppress(Exception):  # a torn or foreign file: recompute what is missing
                    _MEMOS[self.file].update(torch.load(self.file, weights_only=True))
                    _KEPT[self.file].update(_MEMOS[self.file])
        self.memo, self.kept = _MEMOS[self.file], _KEPT[self.file]

    def _key(self, scenario: Scenario, reply: str) -> str:
        return hashlib.sha256(repr((scenario.history, scenario.customer, reply)).encode()).hexdigest()

    def __call__(self, items: list[tuple[Scenario, str]], persist: bool = False) -> torch.Tensor:
        keys = [self._key(scenario, reply) for scenario, reply in items]
        missing = list({k: item for k, item in zip(keys, items) if k not in self.memo}.items())
        if missing:
            self._read(missing)
        if persist and not self.kept.issuperset(keys):
            self.kept.update(keys)
            self._save()
        return torch.stack([self.memo[k] for k in keys]).float()

    def _read(self, missing: list[tuple[str, tuple[Scenario, str]]]) -> None:
        model, tokenizer = _load(self.model_name, self.dtype)
        sequences = []
        for key, (scenario, reply) in missing:
            prompt = tokenizer.apply_chat_template(
                scenario.messages(self.system_prompt), tokenize=False, add_generation_prompt=True
            )
            context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer = tokenizer(reply.strip(), add_special_tokens=False)["input_ids"] + [
                tokenizer.eos_token_id
            ]
            sequences.append((key, context + answer, len(context)))
        sequences.sort(key=lambda s: len(s[1]))  # similar lengths per batch: little padding
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        for start in range(0, len(sequences), self.batch_size):
            batch = sequences[start : start + self.batch_size]
            length = max(len(ids) for _, ids, _ in batch)
            input_ids = torch.full((len(batch), length), pad)
            mask = torch.zeros((len(batch), length), dtype=torch.long)
            for i, (_, ids, _) in enumerate(batch):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                mask[i, : len(ids)] = 1
            hidden = _hidden_states(model, input_ids, mask, READER_LAYER)
            for i, (key, ids, begin) in enumerate(batch):
                self.memo[key] = hidden[i, begin : len(ids)].float().mean(0).to(torch.float16)

    def _save(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.file.with_suffix(f".{os.getpid()}.tmp")
        torch.save({k: self.memo[k] for k in self.kept}, partial)
        partial.replace(self.file)  # atomic: a concurrent reader sees the old file or the whole new one


class _Reached(Exception):
    """Raised by the hook on the last layer read: the layers above it are never run."""

    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


def _hidden_states(model, input_ids: torch.Tensor, mask: torch.Tensor, layer: int) -> torch.Tensor:
    """(B, T, H): the output of decoder layer `layer` (hidden_states[layer] of a full forward pass).

    A forward hook stops the pass there. The reader's model is shared by every reader in the
    process, and the serving gateway scores in a background thread, so the hook exists only inside
    a lock: no other pass can run into it.
    """

    def stop(module, inputs, output):
        raise _Reached(output[0] if isinstance(output, tuple) else output)

    with _HOOK_LOCK:
        handle = model.model.layers[layer - 1].register_forward_hook(stop)
        try:
            with torch.no_grad():
                model.model(input_ids=input_ids, attention_mask=mask)
        except _Reached as reached:
            return reached.hidden
        finally:
            handle.remove()
    raise RuntimeError(f"decoder layer {layer} was never reached")


@dataclass
class ReaderProbe:
    """A linear Bradley-Terry probe on the reader's standardised hidden states: r = z(h) @ weights."""

    mean: torch.Tensor  # (H,)
    std: torch.Tensor  # (H,)
    weights: torch.Tensor  # (H,)

    @classmethod
    def fit(cls, chosen: torch.Tensor, rejected: torch.Tensor, l2: float = PROBE_L2) -> ReaderProbe:
        """chosen, rejected: (P, H). Unlike the hand-made features the directions are unknown, so the
        weights are free; an L2 penalty of 0.03 (`PROBE_L2`) on standardised states did best in
        cross-validation (docs/REWARDS.md, round 6)."""
        both = torch.cat([chosen, rejected])
        mean, std = both.mean(0), both.std(0) + 1e-6
        weights = fit_bradley_terry(
            (chosen - mean) / std, (rejected - mean) / std, l2, nonnegative=False, iterations=300
        )
        return cls(mean, std, weights)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N,)"""
        return ((hidden - self.mean) / self.std) @ self.weights


def out_of_fold_scores(
    chosen: torch.Tensor, rejected: torch.Tensor, folds: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P,), (P,): each pair scored by a probe fit without its fold (stacking, Wolpert 1992).

    The feature model is fit on these, not on the full probe's scores: on its own training pairs
    the probe is nearly always right, and the fit would then hand it all the weight.
    """
    out_chosen, out_rejected = torch.zeros(len(chosen)), torch.zeros(len(rejected))
    for k in np.unique(folds):
        train, test = torch.from_numpy(folds != k), torch.from_numpy(folds == k)
        probe = ReaderProbe.fit(chosen[train], rejected[train])
        out_chosen[test], out_rejected[test] = probe(chosen[test]), probe(rejected[test])
    return out_chosen, out_rejected
