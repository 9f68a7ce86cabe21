"""PPO trainer logic: known optima are reached, and resume is exact.

The policy is the real SmolLM2 backbone with the real head; the target is an echo (it replies
with its system prompt) and the reward pays for one token or one component — a logic test of
the RL loop with a known answer, not evidence about sales quality (see test_train_e2e.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rlprompt.build import TARGETS
from rlprompt.config import validate
from rlprompt.ppo.callbacks import CheckpointCallback
from rlprompt.ppo.run import build_trainer
from rlprompt.ppo.trainer import TASK_LEVEL_CONTEXT, PPOTrainer
from rlprompt.ppo.update import UpdateStats
from rlprompt.rewards.base import REWARDS, RewardResult, register_reward
from rlprompt.targets.base import Reply
from tests.conftest import TEST_THREADS

pytestmark = pytest.mark.slow


class EchoTarget:
    target_id = "echo"

    def generate(self, conversations, params):
        return [
            Reply(
                text=c[0]["content"] if c[0]["role"] == "system" else "", prompt_tokens=0, completion_tokens=0
            )
            for c in conversations
        ]


if "echo" not in TARGETS:
    TARGETS.register("echo")(lambda cfg, retry_counter: EchoTarget())

if "pays_for_phrase" not in REWARDS:

    @register_reward("pays_for_phrase")
    class PaysForPhrase:
        """1 when the seller's reply (the echoed system prompt) contains `phrase`, else 0."""

        low, high = 0.0, 1.0

        def __init__(self, task, phrase: str) -> None:
            self.phrase = phrase

        def score(self, samples):
            return [RewardResult(float(self.phrase in s.first_reply)) for s in samples]


if "pays_for_length" not in REWARDS:

    @register_reward("pays_for_length")
    class PaysForLength:
        """The seller's reply's length in characters / 100, capped at 1: prompts of different
        lengths always differ in reward, so a step's advantages are never all zero."""

        low, high = 0.0, 1.0

        def __init__(self, task) -> None:
            pass

        def score(self, samples):
            return [RewardResult(min(1.0, len(s.first_reply) / 100)) for s in samples]


def make_run(tmp_path: Path, phrase: str, **optimizer) -> dict:
    return {
        "target": {"name": "echo"},
        "policy": optimizer.pop("policy", {}),
        "prompt": {"use_base_instruction": False},
        "reward": {
            "name": "synthetic",
            "modules": {"pays_for_phrase": 1.0},
            "options": {"pays_for_phrase": {"phrase": phrase}},
        },
        "optimizer": {
            "lr": 1e-4,
            "ppo_epochs": 2,
            "minibatches": 1,
            "kl_coef": 0.0,
            "entropy_coef": 0.0,
            **optimizer,
        },
        "cache": {"enabled": False},
        "checkpoint_every": 1000,
        # the test process's thread count (conftest): threads=0 would take every core, and two
        # pytest workers doing so oversubscribed the 2 cores (this file's tests ran 3-5x slower in CI)
        "threads": TEST_THREADS,
    }


def initial_candidate_token(tmp_path: Path) -> str:
    """A word the untrained policy ranks 3rd for the first slot: reachable, but not its choice."""
    trainer = build_trainer(
        validate(make_run(tmp_path, "x", policy={"conditioning": "task_level"})), tmp_path / "probe"
    )
    rollout = trainer.policy.sample([TASK_LEVEL_CONTEXT], greedy=True)
    logits = trainer.policy.action_logits(rollout)[0, 0]
    token_id = int(torch.topk(logits, 3).indices[-1])
    return trainer.policy.tokenizer.decode([token_id]).strip()


def test_ppo_reaches_a_rewarded_token(tmp_path):
    word = initial_candidate_token(tmp_path)
    run = validate(
        make_run(
            tmp_path,
            word,
            steps=12,
            contexts_per_step=2,
            prompts_per_context=8,
            policy={"conditioning": "task_level", "prompt_length": 3},
        )
    )
    trainer = build_trainer(run, tmp_path / "run")
    before = trainer.policy.sample([TASK_LEVEL_CONTEXT], greedy=True).prompts[0]
    assert word not in before
    trainer.train()
    after = trainer.policy.sample([TASK_LEVEL_CONTEXT], greedy=True).prompts[0]
    assert word in after, (word, before, after)
    assert trainer.reward_stats.last_mean > 0.9


def test_ppo_components_reaches_a_rewarded_component(tmp_path):
    run = validate(
        make_run(
            tmp_path,
            "",
            steps=6,  # 4 already reach it (checked); 6 leaves a margin
            contexts_per_step=4,
            prompts_per_context=4,
            policy={"action_space": "components", "prompt_length": 2},
        )
    )
    trainer = build_trainer(run, tmp_path / "run")
    phrases = {c.name: c.phrase for c in trainer.task.components}
    contexts = [s.context_text() for s in trainer.task.split("test")[:8]]
    greedy = trainer.policy.sample(contexts, greedy=True).prompts
    # pay for the component the untrained policy picks least often greedily
    counts = {name: sum(phrase in p for p in greedy) for name, phrase in phrases.items()}
    rewarded = min(counts, key=counts.get)
    trainer.reward.reward.modules["pays_for_phrase"][0].phrase = phrases[rewarded]
    assert counts[rewarded] < len(contexts) / 2
    trainer.train()
    after = trainer.policy.sample(contexts, greedy=True).prompts
    assert all(phrases[rewarded] in p for p in after), (rewarded, after)


def test_resume_gives_identical_head_weights(tmp_path):
    settings = dict(contexts_per_step=2, prompts_per_context=4, policy={"prompt_length": 3})
    full = build_trainer(
        validate({**make_run(tmp_path, " the", steps=4, **dict(settings))}), tmp_path / "full"
    )
    full.train()

    first = {**make_run(tmp_path, " the", steps=2, **dict(settings)), "checkpoint_every": 2}
    interrupted = build_trainer(validate(first), tmp_path / "split")
    interrupted.train()
    assert (tmp_path / "split" / "checkpoints" / "latest.json").exists()
    resumed_cfg = {**make_run(tmp_path, " the", steps=4, **dict(settings)), "resume": str(tmp_path / "split")}
    resumed = build_trainer(validate(resumed_cfg), tmp_path / "split")
    resumed.train()
    assert resumed.step_index == 4
    a, b = full.policy.trainable_state(), resumed.policy.trainable_state()
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and training did move the weights (the comparison is not trivially equal)
    fresh = build_trainer(validate(make_run(tmp_path, " the", steps=0, **dict(settings))), tmp_path / "fresh")
    assert any(not torch.equal(a[k], fresh.policy.trainable_state()[k]) for k in a)


class TwoRanksInOneProcess:
    """Stands in for accelerate's Accelerator in the checkpoint code: rank `r` of 2 processes."""

    num_processes = 2

    def __init__(self, rank: int) -> None:
        self.process_index = rank

    def wait_for_everyone(self) -> None:
        pass


def test_each_rank_resumes_its_own_call_counters(tmp_path):
    """Ranks spend different numbers of calls (cache hits differ), so each rank's counters are
    checkpointed in its own rank file and come back to that rank: per-rank budgets and the summed
    target_calls stay right after a resume."""
    run = validate(make_run(tmp_path, "x", steps=1, contexts_per_step=2, prompts_per_context=2))
    rank1, rank0 = (build_trainer(run, tmp_path / "run", TwoRanksInOneProcess(r)) for r in (1, 0))
    spent = {0: (11, 5), 1: (3, 13)}  # rank → (calls, cache hits)
    for rank, trainer in ((1, rank1), (0, rank0)):  # rank 0 writes state.pt and latest.json last
        trainer.target.counter.calls, trainer.target.counter.cache_hits = spent[rank]
        trainer.callback(CheckpointCallback).save(trainer)
    for rank, trainer in ((0, rank0), (1, rank1)):
        trainer.target.counter.calls = trainer.target.counter.cache_hits = 0
        trainer.callback(CheckpointCallback).load(trainer, tmp_path / "run")
        counter = trainer.target.counter
        assert (counter.calls, counter.cache_hits) == spent[rank], f"rank {rank}"


def test_resume_refuses_a_checkpoint_whose_head_does_not_match(tmp_path):
    from rlprompt.errors import UserError

    trainer = build_trainer(validate(make_run(tmp_path, "x", steps=1)), tmp_path / "run")
    trainer.callback(CheckpointCallback).save(trainer)
    state_file = tmp_path / "run" / "checkpoints" / "step_000000" / "state.pt"
    state = torch.load(state_file, weights_only=False)
    weights = state["policy"]
    renamed = next(k for k in weights if k.endswith("weight"))
    weights[renamed.replace("weight", "kernel")] = weights.pop(renamed)  # e.g. a head saved by other code
    torch.save(state, state_file)
    with pytest.raises(UserError) as info:
        trainer.callback(CheckpointCallback).load(trainer, tmp_path / "run")
    message = str(info.value)
    assert renamed in message and renamed.replace("weight", "kernel") in message, message


def test_checkpoint_holds_only_what_resume_reads(tmp_path):
    """No per-step history (it grew with every checkpoint and nothing read it); reward statistics
    are the one value read (the progress bar's last mean); counters live in the rank files."""
    run = validate(make_run(tmp_path, "x", steps=3, contexts_per_step=2, prompts_per_context=2))
    trainer = build_trainer(run, tmp_path / "run")
    trainer.train()
    step_dir = tmp_path / "run" / "checkpoints" / "step_000003"
    state = torch.load(step_dir / "state.pt", weights_only=False)
    assert "history" not in state and "counters" not in state, sorted(state)
    assert {"step", "policy", "optimizer", "reward_stats"} <= set(state)
    assert state["reward_stats"] == {"last_mean": trainer.reward_stats.last_mean}
    assert not hasattr(trainer, "history")
    rank = torch.load(step_dir / "rng_rank0.pt", weights_only=False)
    assert rank["counters"]["target"] == trainer.target.counter.state_dict()


def test_paired_halves_replay_the_first_half_scenarios_step_for_step(tmp_path):
    """Step t + steps/2 answers exactly the scenarios of step t, and a step's draw depends on its
    index alone (a resumed run draws what the uninterrupted one did); off, the halves differ."""
    settings = dict(steps=6, contexts_per_step=4, prompts_per_context=2, stratify_stages=True)

    def draws(paired: bool, order: list[int]) -> dict[int, list[str]]:
        trainer = build_trainer(
            validate(make_run(tmp_path, "x", paired_halves=paired, **settings)), tmp_path / f"r{paired}"
        )
        out = {}
        for step in order:
            trainer.step_index = step
            out[step] = [s.id for s in trainer.draw_contexts()]
        return out

    paired = draws(True, list(range(6)))
    assert [paired[t] for t in range(3)] == [paired[t + 3] for t in range(3)]
    assert len({tuple(ids) for ids in paired.values()}) == 3  # three distinct draws, each played twice
    assert draws(True, [4, 1]) == {4: paired[4], 1: paired[1]}  # no hidden state between steps
    unpaired = draws(False, list(range(6)))
    assert [unpaired[t] for t in range(3)] != [unpaired[t + 3] for t in range(3)]
    # under a budget `steps` is only an upper bound: the halves are of the steps the budget buys
    settings.update(steps=1000, budget=32)  # 4 steps of C x G = 8 calls
    budgeted = draws(True, list(range(6)))
    assert budgeted[0] == budgeted[2] and budgeted[1] == budgeted[3] and budgeted[0] != budgeted[1]
    assert budgeted[4] not in (budgeted[0], budgeted[1])  # past both halves: no third pass


def test_lr_warmup_shrinks_the_first_steps_move_of_the_head(tmp_path):
    """With `lr_warmup_fraction=0.5` of 4 steps, the first PPO step moves the head's weights half
    as far as without (Adam's step is ~lr per weight, whatever the gradient's size) and the rate
    reaches `lr` at step 2; a step's rate depends on its index alone (resume needs no scheduler
    state). Under a budget the ramp is of the steps the budget buys."""
    from rlprompt.ppo.callbacks import Callback

    class Record(Callback):
        def __init__(self) -> None:
            self.rates: list[float] = []
            self.first_move: float | None = None

        def on_train_begin(self, trainer) -> None:
            self.before = [p.detach().clone() for p in trainer.params_trainable]

        def on_step_end(self, trainer, step) -> None:
            self.rates.append(trainer.optimizer.param_groups[0]["lr"])
            if self.first_move is None:
                moves = [(p.detach() - b).abs().max() for p, b in zip(trainer.params_trainable, self.before)]
                self.first_move = float(max(moves))

    def settings(fraction: float, **extra) -> dict:
        run = make_run(
            tmp_path,
            "",
            lr_warmup_fraction=fraction,
            contexts_per_step=2,
            prompts_per_context=4,
            policy={"conditioning": "task_level"},
            **{"steps": 4, **extra},
        )
        run["reward"].update(modules={"pays_for_length": 1.0}, options={})
        return run

    def train(fraction: float) -> tuple[Record, PPOTrainer]:
        record = Record()
        trainer = build_trainer(validate(settings(fraction)), tmp_path / f"w{fraction}", callbacks=[record])
        torch.manual_seed(0)
        for p in trainer.params_trainable:  # a head away from zero, so every weight gets a gradient
            p.data.normal_(0, 0.02)
        trainer.train()
        return record, trainer

    (full, _), (warmed, trainer) = train(0.0), train(0.5)
    assert full.rates == pytest.approx([1e-4] * 4)
    assert warmed.rates == pytest.approx([5e-5, 1e-4, 1e-4, 1e-4])
    assert warmed.first_move == pytest.approx(full.first_move / 2, rel=0.05), (
        warmed.first_move,
        full.first_move,
    )
    trainer.cfg = validate(settings(0.5, steps=1000, budget=64)).optimizer
    assert trainer.warmup_steps() == 4  # 64 calls buy 8 steps of C x G = 8


def test_selection_passes_over_an_unfinished_sentence_not_one_that_ends_at_the_last_position(tmp_path):
    """Seed 1 of stop 25 shipped "... at all of the." (the period forced at the last position);
    stop 27's seed 1 passed over "I'm happy to help you find the right car for you." (a sentence
    that ends at the last position by itself) because the ids alone looked cut. The frozen LM's
    probability of the period tells them apart. Here the cut candidate is the val-best (the reward
    pays for its words), yet the finished one ships."""
    from rlprompt.ppo.learning import Candidate
    from rlprompt.ppo.run import learned_prompts, select_task_prompt

    default = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "policy" / "tokens.yaml")
    policy = {  # the default policy's prefix and voice, a shorter K
        **{k: default[k] for k in ("prefix_template", "answer_start", "prompt_lead", "allowed_tokens")},
        "conditioning": "task_level",
        "prompt_length": 8,
        "end_with_period": True,
    }
    run = validate(
        {
            **make_run(tmp_path, "car you", steps=1, policy=policy),
            "eval": {
                "max_scenarios": 2,
                "select_checkpoints": 1,
                "select_samples": 2,
                "min_end_probability": 0.005,
            },
        }
    )
    trainer = build_trainer(run, tmp_path / "run")
    tok, period = trainer.policy.tokenizer, trainer.policy.actions.stop_id

    def ids(text: str) -> list[int]:
        words = tok(text, add_special_tokens=False)["input_ids"]
        return (words + [period] * 8)[:8]

    at_last, early = ids(" can help you find the right car."), ids(" can help you find a car.")
    cut = [*ids(" can help you find the car you")[:7], period]  # the period came only where it is forced
    assert at_last[-1] == period and period not in at_last[:-1]  # ends at the last position by itself
    end = {name: trainer.policy.sentence_end(a, TASK_LEVEL_CONTEXT) for name, a in
           (("at_last", at_last), ("early", early), ("cut", cut))}  # fmt: skip
    assert (
        end["at_last"].probability > 0.005
        and end["early"].probability > 0.005
        and end["cut"].probability < 0.005
    ), end
    trimmed = end["cut"].trimmed  # where the LM would have ended it: earlier, with the period there
    assert (
        trimmed != cut
        and trimmed.index(period) < 7
        and trimmed[: trimmed.index(period)] == cut[: trimmed.index(period)]
    )
    trainer.learning.greedy = [Candidate("I can help you find the right car.", at_last, "greedy@1")]
    trainer.learning.keep_samples = 2
    trainer.learning.samples = {
        "I can help you find the car you.": Candidate(
            "I can help you find the car you.", cut, "sample@1", 1.0, 4
        ),
    }
    prompts = learned_prompts(trainer, run)
    selection = select_task_prompt(trainer, run, prompts, trainer.target)
    assert "I can help you find the car you." in selection["passed_over_unfinished"]
    assert "I can help you find the right car." not in selection["passed_over_unfinished"]
    assert selection["chosen"] != "I can help you find the car you." == selection["passed_over_unfinished"][0]
    assert selection["chosen"] == prompts.task_level.text
    rows = {c["text"]: c for c in selection["candidates"]}
    assert [c["action_ids"] for c in rows.values() if c["source"] == "trimmed sample@1"] == [trimmed]
    assert rows["I can help you find the right car."]["end_probability"] == pytest.approx(
        end["at_last"].probability
    )


def test_greedy_prompt_competes_in_every_group_but_not_in_the_training_reward(tmp_path):
    """With `optimizer.greedy_in_group`, the policy's greedy prompt answers each of the step's
    scenarios as one more member of its group, z-scored and updated like the samples (under a
    reward that pays for length it is pushed up exactly when it is longer than its group's mean);
    the logged training reward is the samples' alone, the greedy prompt's is logged apart, and
    the samples are the ones the same seed draws without it."""
    C, G = 2, 3

    def collect(greedy_in_group: bool):
        run = make_run(
            tmp_path,
            "",
            steps=2,
            contexts_per_step=C,
            prompts_per_context=G,
            greedy_in_group=greedy_in_group,
            policy={"conditioning": "task_level", "prompt_length": 4},
        )
        run["reward"].update(modules={"pays_for_length": 1.0}, options={})
        trainer = build_trainer(validate(run), tmp_path / f"g{greedy_in_group}")
        return trainer, trainer.collect()

    trainer, batch = collect(True)
    greedy = trainer.policy.sample([TASK_LEVEL_CONTEXT], greedy=True).prompts[0]
    assert batch.rollout.prompts[G] == greedy and batch.sampled == G
    assert batch.raw_reward.shape == (C * (G + 1),)
    lengths = torch.tensor([min(1.0, len(p) / 100) for p in batch.rollout.prompts])  # echo: reply = prompt
    above = float(lengths[G] - lengths.mean())
    assert above == 0 or math.copysign(1, float(batch.advantages[G])) == math.copysign(1, above)
    sampled = batch.sampled_conversations()
    assert int(sampled.sum()) == C * G and (batch.prompt_index[~sampled] == G).all()
    stats = UpdateStats(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    trainer.finish_step(batch, stats, 1.0)
    assert trainer.learning.reward[-1] == pytest.approx(float(lengths[:G].mean()))
    assert trainer.learning.diagnostics[-1]["greedy_reward"] == pytest.approx(float(lengths[G]))
    assert trainer.learning.diagnostics[-1]["prompts"] == G
    _, plain = collect(False)
    assert plain.rollout.prompts == batch.rollout.prompts[:G] and plain.sampled == -1
