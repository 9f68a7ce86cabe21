"""Local Hugging Face target: batched, left-padded generation with the KV cache.

Instruct models get their chat template. Base models (e.g. gemma3-270m) get a documented plain
completion format, because they were never trained on a chat template:

    {system message}

    Customer: {user turn}
    Salesperson: {assistant turn}
    Customer: {user turn}
    Salesperson:

and generation stops at the next "\\nCustomer:" (or the end-of-text token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from rlprompt.models import context_window, is_chat_model, load_model
from rlprompt.targets.base import (
    Conversation,
    GenerationParams,
    InputTooLong,
    Reply,
    validate_conversation,
)


@dataclass(frozen=True)
class CompletionFormat:
    """Plain-text transcript format for base models."""

    user_label: str = "Customer"
    assistant_label: str = "Salesperson"

    def render(self, conversation: Conversation) -> str:
        system = "\n".join(m["content"] for m in conversation if m["role"] == "system")
        labels = {"user": self.user_label, "assistant": self.assistant_label}
        turns = [f"{labels[m['role']]}: {m['content']}" for m in conversation if m["role"] != "system"]
        head = f"{system}\n\n" if system else ""
        return head + "\n".join([*turns, f"{self.assistant_label}:"])

    @property
    def stop_strings(self) -> list[str]:
        return [f"\n{self.user_label}:", f"\n{self.assistant_label}:"]

    def clean(self, text: str) -> str:
        for stop in self.stop_strings:
            text = text.split(stop)[0]
        return text.strip()


class _StopOnStrings(StoppingCriteria):
    """Per-sequence stop when the generated text contains a stop string.

    Cheaper than `generate(stop_strings=...)`, whose set-up scans the whole vocabulary
    (seconds for Gemma's 262k tokens) on every call.
    """

    def __init__(self, tokenizer, stops: list[str], prompt_length: int, window: int = 8) -> None:
        self.tokenizer, self.stops, self.prompt_length, self.window = tokenizer, stops, prompt_length, window

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        tails = self.tokenizer.batch_decode(
            input_ids[:, max(self.prompt_length, input_ids.shape[1] - self.window) :]
        )
        return torch.tensor([any(s in t for s in self.stops) for t in tails], device=input_ids.device)


class HFTarget:
    """Generates replies with a local causal LM. Deterministic when greedy."""

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        dtype: str = "float32",
        format: str = "auto",
        batch_size: int = 16,
        completion_format: CompletionFormat | None = None,
        loaded: tuple | None = None,
        max_input_tokens: int | None = None,
    ) -> None:
        self.model_name = model
        self.model, self.tokenizer = loaded if loaded is not None else load_model(model, dtype)
        chat = is_chat_model(model, self.tokenizer) if format == "auto" else format == "chat"
        self.format = "chat" if chat else "completion"
        self.completion = completion_format or CompletionFormat()
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens  # None: the context window alone (less the reply)
        self.context_window = context_window(self.model)
        self.target_id = f"hf:{model}:{dtype}:{self.format}"

    def render(self, conversation: Conversation) -> str:
        """The exact text the model continues from."""
        validate_conversation(conversation)
        if self.format == "chat":
            return self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
        return self.completion.render(conversation)

    @torch.inference_mode()
    def generate(self, conversations: list[Conversation], params: GenerationParams) -> list[Reply]:
        texts = [self.render(c) for c in conversations]
        self.check_lengths(conversations, texts, params)  # before any generation
        # Similar lengths in one batch waste less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        replies: list[Reply | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            for i, reply in zip(idx, self._generate_batch([texts[i] for i in idx], params)):
                replies[i] = reply
        return replies  # type: ignore[return-value]

    def input_limit(self, params: GenerationParams) -> int | None:
        """Most prompt tokens a request may have: `max_input_tokens`, capped by the context window
        less the reply's `max_new_tokens`."""
        room = None if self.context_window is None else self.context_window - params.max_new_tokens
        limits = [x for x in (self.max_input_tokens, room) if x is not None]
        return min(limits) if limits else None

    def check_lengths(
        self, conversations: list[Conversation], texts: list[str], params: GenerationParams
    ) -> None:
        """Refuse a request longer than `input_limit`, naming it, its length, the limit and the fix.

        Long inputs do not fail on their own: a few thousand tokens fit the window but make a CPU
        step run for minutes without a word (and a request past the window degrades silently).
        """
        limit = self.input_limit(params)
        if limit is None:
            return
        add_special = self.format == "completion"
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=add_special)["input_ids"]]
        for i, n in enumerate(lengths):
            if n > limit:
                room = None if self.context_window is None else self.context_window - params.max_new_tokens
                window = (
                    f"{self.model_name}'s context window is {self.context_window} tokens, "
                    f"{params.max_new_tokens} of them kept for the reply"
                    if self.context_window is not None
                    else f"{self.model_name}'s context window is unknown"
                )
                raise InputTooLong(
                    f"request {i + 1} of {len(texts)} to {self.target_id} is {n} tokens, over the input "
                    f"limit of {limit} (target.max_input_tokens={self.max_input_tokens or 0}; {window}); "
                    "nothing was generated. Shorten the scenario's customer turn or history, or raise "
                    f"target.max_input_tokens{f' (at most {room})' if room is not None else ''} if the "
                    "slower steps are acceptable",
                    conversations[i],
                )

    def _generate_batch(self, texts: list[str], params: GenerationParams) -> list[Reply]:
        tok = self.tokenizer
        add_special = self.format == "completion"  # chat templates already hold their special tokens
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=not params.greedy,
            pad_token_id=tok.pad_token_id,
            eos_token_id=self._eos_ids(),
        )
        if not params.greedy:
            torch.manual_seed(params.seed)
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.format == "completion":
            stop = _StopOnStrings(tok, self.completion.stop_strings, enc["input_ids"].shape[1])
            kwargs.update(stopping_criteria=StoppingCriteriaList([stop]))
        out = self.model.generate(**enc, **kwargs)
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        prompt_lengths = enc["attention_mask"].sum(dim=1).tolist()
        replies = []
        for row, n_prompt in zip(new_tokens, prompt_lengths):
            n_new = self._length_until_stop(row)
            text = tok.decode(row[:n_new], skip_special_tokens=True)
            if self.format == "completion":
                text = self.completion.clean(text)
            replies.append(Reply(text=text.strip(), prompt_tokens=int(n_prompt), completion_tokens=n_new))
        return replies

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        for token in ("<|im_end|>", "<end_of_turn>", "<|endoftext|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return sorted(i for i in ids if i is not None)

    def _length_until_stop(self, row: torch.Tensor) -> int:
        stops = set(self._eos_ids()) | {self.tokenizer.pad_token_id}
        for i, token in enumerate(row.tolist()):
            if token in stops:
                return i
        return len(row)
