"""The prompt policy with the real SmolLM2 backbone."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rlprompt.config import PolicyConfig
from rlprompt.models import load_model
from rlprompt.policy.action_spaces import CONTRACTIONS, allowed_token_mask, encode_prefixes, position_ids
from rlprompt.policy.policy import PromptPolicy
from rlprompt.task import load_task

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backbone():
    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def task():
    return load_task("car_sales")


def contexts(task, n=4):
    return [s.context_text() for s in task.split("train")[:: 144 // n][:n]]


def test_residual_head_starts_at_the_frozen_lm(backbone, task):
    model, tokenizer = backbone
    policy = PromptPolicy(PolicyConfig(head="residual_mlp", allowed_tokens="all"), task, model, tokenizer)
    rollout = policy.sample(contexts(task, 2), greedy=True)
    policy_logits = policy.action_logits(rollout)[:, 0]  # (B, V) at the first action
    enc = encode_prefixes(tokenizer, [policy.prefix_text(c) for c in rollout.context_texts])
    with torch.no_grad():
        lm_logits = model(**enc, position_ids=position_ids(enc["attention_mask"])).logits[:, -1]
    special = torch.tensor(tokenizer.all_special_ids)
    keep = torch.ones(lm_logits.shape[-1], dtype=torch.bool)
    keep[special] = False
    assert torch.allclose(policy_logits[:, keep], lm_logits[:, keep], atol=1e-3)


def test_rlprompt_mlp_head_does_not_start_at_the_lm(backbone, task):
    model, tokenizer = backbone
    torch.manual_seed(0)
    plain = PromptPolicy(PolicyConfig(head="mlp"), task, model, tokenizer)
    residual = PromptPolicy(PolicyConfig(head="residual_mlp"), task, model, tokenizer)
    ctx = contexts(task, 1)
    assert plain.sample(ctx, greedy=True).prompts != residual.sample(ctx, greedy=True).prompts


def test_batched_greedy_equals_one_by_one_and_logprobs_rescore(backbone, task):
    model, tokenizer = backbone
    policy = PromptPolicy(PolicyConfig(), task, model, tokenizer)
    ctx = contexts(task, 4)
    batched = policy.sample(ctx, greedy=True)
    singles = [policy.sample([c], greedy=True).prompts[0] for c in ctx]
    assert batched.prompts == singles
    g = torch.Generator().manual_seed(1)
    sampled = policy.sample(ctx, generator=g)
    rescored = torch.log_softmax(policy.action_logits(sampled), -1).gather(-1, sampled.actions[..., None])
    assert torch.allclose(rescored.squeeze(-1), sampled.logprobs, atol=1e-4)
    assert sampled.actions.shape == (4, 5) and sampled.hidden.shape == (4, 5, model.config.hidden_size)


def test_words_mask_keeps_prompts_readable(backbone, task):
    model, tokenizer = backbone
    mask = allowed_token_mask(tokenizer, "words", model.get_output_embeddings().weight.shape[0])
    assert 5_000 < int(mask.sum()) < len(tokenizer)
    policy = PromptPolicy(PolicyConfig(allowed_tokens="words"), task, model, tokenizer)
    g = torch.Generator().manual_seed(0)
    rollout = policy.sample(contexts(task, 4) * 4, generator=g)
    for prompt in rollout.prompts:
        assert all(READABLE.fullmatch(word) for word in prompt.split()), prompt
    assert mask[rollout.actions].all()


READABLE = re.compile(r"[A-Za-z]+('(t|s|re|ll|ve|d|m))?")


def test_words_mask_lets_a_rule_finish_its_contractions(backbone):
    """BPE writes "don't" as " don" + "'t": without the ending a rule read "that they don for
    themselves" (stop 20, seed 1). The endings are allowed; a bare apostrophe or "'" + letters is not."""
    model, tokenizer = backbone
    mask = allowed_token_mask(tokenizer, "words", model.get_output_embeddings().weight.shape[0])
    ids = tokenizer.encode(" they don't, it's theirs", add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert "'t" in pieces and "'s" in pieces
    allowed = {p for p, i in zip(pieces, ids) if mask[i]}
    assert {" they", " don", "'t", " it", "'s", " theirs"} <= allowed
    assert "," not in allowed
    every = {tokenizer.decode([i]).strip() for i in mask.nonzero().flatten().tolist()}
    assert all((piece.isalpha() and piece.isascii()) or piece in CONTRACTIONS for piece in every)


def rule_policy(backbone, task, prompt_length: int):
    """The default rule-writing policy (period-ended, task level) and 16 rules it samples."""
    model, tokenizer = backbone
    cfg = PolicyConfig(
        conditioning="task_level", prompt_length=prompt_length, top_k=16, prompt_lead="Always",
        answer_start="Rule:", end_with_period=True,
        prefix_template="Write one rule for what a {role} should do in every reply to a customer. {context}",
    )  # fmt: skip
    policy = PromptPolicy(cfg, task, model, tokenizer)
    stop = tokenizer.convert_tokens_to_ids(".")
    return cfg, policy, stop, policy.sample([""] * 16, generator=torch.Generator().manual_seed(0))


def test_a_rule_ends_at_its_period_and_the_forced_tail_carries_no_gradient(backbone, task):
    model, tokenizer = backbone
    cfg, policy, stop, rollout = rule_policy(backbone, task, prompt_length=12)
    ended = [p for p in rollout.prompts if p.endswith(".")]
    assert len(ended) >= 4, rollout.prompts  # the backbone finishes most rules within 12 tokens
    for row, prompt in zip(rollout.actions.tolist(), rollout.prompts):
        if stop in row:
            at = row.index(stop)
            assert at >= 3, prompt  # never "Always ask."
            assert all(a == stop for a in row[at:]), row  # forced after the period
            assert prompt.count(".") == 1 and prompt.endswith("."), prompt
    logp = torch.log_softmax(policy.action_logits(rollout), -1)  # (B, K, V)
    rescored = logp.gather(-1, rollout.actions[..., None]).squeeze(-1)
    assert torch.allclose(rescored, rollout.logprobs, atol=1e-4)
    forced = (torch.cumsum((rollout.actions == stop).long(), 1) - (rollout.actions == stop).long()) > 0
    assert forced.any()
    assert torch.all(rescored[forced] == 0.0)  # log-prob exactly 0: no policy gradient, no KL there
    assert torch.all(logp[:, :3, stop] < -1e6)  # the period is barred for the first three tokens
    plain = PromptPolicy(replace(cfg, end_with_period=False), task, model, tokenizer)
    assert not any(
        "." in p for p in plain.sample([""] * 8, generator=torch.Generator().manual_seed(0)).prompts
    )


def test_a_rule_that_has_not_ended_by_the_last_token_ends_there(backbone, task):
    """With 6 tokens most rules are still going at the last position; the period is forced there
    (log-prob 0), so every shipped rule is a finished sentence. Stop 19's seed 0 shipped "Always
    provide the customer with the most recent car model and the most" before this."""
    _, policy, stop, rollout = rule_policy(backbone, task, prompt_length=6)
    assert all(p.endswith(".") and p.count(".") == 1 for p in rollout.prompts), rollout.prompts
    assert torch.all(rollout.actions[:, -1] == stop)
    cut = rollout.actions[:, :-1].ne(stop).all(1)  # rules whose period is the forced last token
    assert cut.any()  # the case this test is about does occur at K = 6
    assert torch.all(rollout.logprobs[cut, -1] == 0.0)  # forced: no policy gradient, no KL there
    logp = torch.log_softmax(policy.action_logits(rollout), -1)
    assert torch.allclose(
        logp.gather(-1, rollout.actions[..., None]).squeeze(-1), rollout.logprobs, atol=1e-4
    )


def test_the_default_first_person_lead_joins_its_contraction(backbone, task):
    """The default policy writes "I" + "'m happy to ...": the lead and a contraction ending are one
    word ("I'm"), not "I 'm" (a target reads the latter as a typo, and prompt.txt ships it)."""
    model, tokenizer = backbone
    cfg = PolicyConfig(**OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "policy" / "tokens.yaml")))
    assert cfg.prompt_lead == "I"  # the shipped default, read from its yaml
    policy = PromptPolicy(cfg, task, model, tokenizer)
    prompts = policy.sample([""] * 16, generator=torch.Generator().manual_seed(0)).prompts
    contracted = [p for p in prompts if p.startswith("I'")]
    assert contracted, prompts  # the prior writes "I'm ..." often
    assert not any(p.startswith("I '") for p in prompts), prompts
    assert all(p.startswith("I ") or p.startswith("I'") for p in prompts), prompts
    m = tokenizer.convert_tokens_to_ids("'m")
    word = tokenizer.encode(" happy", add_special_tokens=False)[0]
    assert policy.decode(torch.tensor([m, word])) == "I'm happy"
    assert policy.decode(torch.tensor([word])) == "I happy"


def test_components_are_distinct_and_decode_to_phrases(backbone, task):
    model, tokenizer = backbone
    policy = PromptPolicy(PolicyConfig(action_space="components", prompt_length=4), task, model, tokenizer)
    g = torch.Generator().manual_seed(0)
    rollout = policy.sample(contexts(task, 4) * 2, generator=g)
    phrases = [c.phrase for c in task.components]
    for row, prompt in zip(rollout.actions, rollout.prompts):
        assert len(set(row.tolist())) == 4  # never the same component twice
        assert sum(p in prompt for p in phrases) == 4
    logits = policy.action_logits(rollout)
    # the masks at later positions exclude what was chosen before: rescoring matches sampling
    rescored = torch.log_softmax(logits, -1).gather(-1, rollout.actions[..., None]).squeeze(-1)
    assert torch.allclose(rescored, rollout.logprobs, atol=1e-4)


def test_too_many_components_is_a_clear_error(backbone, task):
    from rlprompt.errors import ConfigError

    model, tokenizer = backbone
    with pytest.raises(ConfigError, match="max_components"):
        PromptPolicy(PolicyConfig(action_space="components", prompt_length=9), task, model, tokenizer)


def test_lora_head_trains_adapter_weights_only(backbone, task):
    model, tokenizer = load_model("smollm2-135m-instruct")  # its own copy: peft wraps the module
    policy = PromptPolicy(PolicyConfig(head="lora", prompt_length=3), task, model, tokenizer)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    g = torch.Generator().manual_seed(0)
    rollout = policy.sample(contexts(task, 2), generator=g)
    rescored = torch.log_softmax(policy.action_logits(rollout), -1).gather(-1, rollout.actions[..., None])
    assert torch.allclose(rescored.squeeze(-1), rollout.logprobs, atol=1e-3)
    reference = policy.action_logits(rollout, reference=True)
    assert torch.allclose(reference, policy.action_logits(rollout), atol=1e-4)  # LoRA B starts at zero
    assert set(policy.trainable_state()) and all("lora_" in k for k in policy.trainable_state())


def test_teacher_forced_hidden_feeds_the_backbone_on_its_device():
    """LoRA on a GPU: the prefix ids (tokenized on the CPU) and the mask must reach the backbone's
    device. A stub backbone on the `meta` device records what it is given."""
    from types import SimpleNamespace

    from rlprompt.policy.action_spaces import TokenActions

    class Tokenizer:
        bos_token = None

        def __call__(self, texts, **kwargs):
            ids = torch.tensor([[5, 6, 7]] * len(texts))
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    class Backbone(torch.nn.Module):
        device = torch.device("meta")

        def forward(self, **inputs):
            self.inputs = inputs
            ids = inputs["input_ids"]
            return SimpleNamespace(hidden_states=[torch.zeros(*ids.shape, 4, device=ids.device)])

    space = TokenActions.__new__(TokenActions)  # only the tokenizer is needed for this pass
    space.tokenizer = Tokenizer()
    backbone = Backbone()
    actions = torch.tensor([[1, 2, 3], [4, 5, 6]])  # (B, K) as sampled
    hidden = space.teacher_forced_hidden(backbone, ["a", "b"], actions)
    for name in ("input_ids", "attention_mask", "position_ids"):
        assert backbone.inputs[name].device == backbone.device, name
    assert backbone.inputs["input_ids"].shape == (2, 3 + 2)  # prefix + all actions but the last
    assert hidden.shape == (2, 3, 4) and hidden.device == backbone.device
