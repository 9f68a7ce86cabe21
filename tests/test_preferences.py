"""The expert preference pairs and the RewardBench-style accuracy computed on them."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from rlprompt.errors import ConfigError, RewardError
from rlprompt.preferences import accuracy_table, load_pairs, score_pairs
from rlprompt.rewards.base import RewardFunction, RewardResult
from rlprompt.task import load_task

CATEGORIES = ["needs", "next_step", "answers", "honest", "calm", "on_topic", "warm", "concise"]


@pytest.fixture(scope="module")
def task():
    return load_task("car_sales")


def test_the_pairs_cover_every_category_persona_and_stage_in_two_halves(task):
    pairs = load_pairs(task, splits=("dev", "heldout"))  # never opens preferences_fresh.jsonl
    assert len(pairs) >= 200
    assert len({p.id for p in pairs}) == len(pairs)
    by_category = Counter(p.category for p in pairs)
    assert set(by_category) == set(CATEGORIES) and min(by_category.values()) >= 25
    for category in CATEGORIES:
        halves = Counter(p.split for p in pairs if p.category == category)
        assert halves["dev"] == halves["heldout"]  # half of every category is kept for the report
    assert {p.scenario.persona for p in pairs} == {x.name for x in task.personas}
    assert {p.scenario.stage for p in pairs} == {x.name for x in task.stages}
    assert all(p.scenario.urgency != "high" for p in pairs if p.category == "calm")
    assert all(p.chosen.strip() and p.rejected.strip() and p.chosen != p.rejected for p in pairs)
    assert sum(p.hard for p in pairs) >= len(pairs) // 5


class LengthReward:
    """A stand-in module: longer reply, higher score (for the accuracy arithmetic only)."""

    low, high = 0.0, 1000.0

    def score(self, samples):
        return [RewardResult(float(len(s.first_reply))) for s in samples]


def test_the_weighted_sum_bounds_swap_a_negative_weight_s_ends():
    """PPO's shaping and the gateway's normalisation map rewards through these bounds."""

    class Unit:
        low, high = 0.0, 1.0

    reward = RewardFunction({"length": (LengthReward(), 0.5), "unit": (Unit(), -2.0)})
    assert reward.bounds() == (-2.0, 500.0)


def test_accuracy_counts_strict_wins_and_reports_ties_apart(task):
    pairs = [p for p in load_pairs(task, splits=("dev",)) if p.category == "concise"]  # short wins
    scores = score_pairs(pairs, RewardFunction({"length": (LengthReward(), 1.0)}), {"neg": {"length": -1.0}})
    table = accuracy_table(scores, "all")
    assert table.accuracy["length"]["concise"] == 0.0  # prefers the padded reply every time
    assert table.accuracy["neg"]["concise"] == 1.0
    assert table.n["overall"] == len(pairs)
    same = score_pairs(pairs, RewardFunction({"length": (LengthReward(), 1.0)}), {"flat": {"length": 0.0}})
    accuracy, ties = same.accuracy("flat")
    assert accuracy == 0.0 and ties == 1.0  # a tie is never a win
    dev = accuracy_table(scores, "dev")
    assert dev.n["overall"] == sum(p.split == "dev" for p in pairs)


def test_a_bad_pair_names_the_file_line_and_field(task, tmp_path):
    good = json.loads((task.folder / "preferences.jsonl").read_text().splitlines()[0])
    path = tmp_path / "preferences.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "persona": "Astronaut"}) + "\n")
    with pytest.raises(ConfigError, match=r"preferences.jsonl:2: persona 'Astronaut'; valid: Newbie"):
        load_pairs(task, path)
    path.write_text(json.dumps({**good, "split": "train"}) + "\n")
    with pytest.raises(ConfigError, match=r":1: split 'train'; valid: dev, heldout"):
        load_pairs(task, path)
    path.write_text("\ufeff" + json.dumps(good) + "\n")  # a BOM from a spreadsheet export is fine
    assert len(load_pairs(task, path)) == 1
    with pytest.raises(ConfigError, match="no preference pairs"):
        load_pairs(task, tmp_path / "missing.jsonl")


def test_audit_pairs_load_only_when_asked_and_the_reward_never_fits_on_them(task, tmp_path):
    """The test split's file (today preferences_audit8.jsonl) next to preferences.jsonl adds its pairs
    (the reward's final test); fitting never opens it, and naming it as a fit split is refused."""
    import dataclasses

    from rlprompt.preferences import TEST_SPLITS
    from rlprompt.rewards.preference import FIT_SPLITS

    test = TEST_SPLITS[0]

    lines = (task.folder / "preferences.jsonl").read_text().splitlines()
    (tmp_path / "preferences.jsonl").write_text("\n".join(lines) + "\n")
    own = {**json.loads(lines[0]), "id": "mine-1", "split": test}
    audit = tmp_path / f"preferences_{test}.jsonl"
    audit.write_text(json.dumps(own) + "\n")
    local = dataclasses.replace(task, folder=tmp_path)
    everything = load_pairs(local)
    assert [p.id for p in everything if p.split == test] == ["mine-1"]
    assert len(everything) == len(lines) + 1
    assert all(p.split != test for p in load_pairs(local, splits=FIT_SPLITS))
    # an audit file with a dev pair in it (or a reused id) would leak the test into the fit
    audit.write_text(json.dumps({**own, "split": "dev"}) + "\n")
    with pytest.raises(ConfigError, match=rf"preferences_{test}.jsonl:1: split 'dev'; valid: {test}"):
        load_pairs(local)
    audit.write_text(json.dumps({**own, "id": "pref-0001"}) + "\n")
    with pytest.raises(ConfigError, match=r"also used in another preference file"):
        load_pairs(local)
    broken = {k: v for k, v in own.items() if k != "rejected"}
    audit.write_text(json.dumps(broken) + "\n")
    with pytest.raises(ConfigError, match=rf"preferences_{test}.jsonl:1: missing field 'rejected'"):
        load_pairs(local)
    audit.write_text(json.dumps({**own, "history": [{"role": "customer", "content": "Hi"}]}) + "\n")
    with pytest.raises(
        ConfigError, match=rf"{test}.jsonl:1: field 'history' has a turn with role 'customer'"
    ):
        load_pairs(local)
    audit.write_text(json.dumps({**own, "category": "next"}) + "\n")
    with pytest.raises(ConfigError, match=rf"{test}.jsonl:1: category 'next'; valid: needs, next_step,"):
        load_pairs(local)
    audit.write_text(json.dumps({**own, "chosen": " "}) + "\n")
    with pytest.raises(ConfigError, match=r":1: field 'chosen' is empty"):
        load_pairs(local)
    # the preference model fits on dev + heldout (+ the later files, none here) and never opens the (broken) test file
    from rlprompt.rewards.preference import PreferenceReward

    assert PreferenceReward(local).n_pairs == len(lines)
    with pytest.raises(RewardError, match=f"must not include '{test}'"):
        PreferenceReward(local, split=f"dev+{test}")
    dev = [x for x in lines if json.loads(x)["split"] == "dev"]
    assert PreferenceReward(local, split="dev+audit2").n_pairs == len(dev)  # no audit2 file here


@pytest.fixture(scope="module")
def features(task):
    from rlprompt.rewards.preference import PairFeatures

    return PairFeatures(task)


def test_preference_model_fits_only_the_splits_it_is_given(task, tmp_path, features):
    """Scrambling every heldout pair must not change a dev-only fit, and must change the default."""
    from rlprompt.rewards.preference import FIT_SPLITS, PreferenceReward

    lines = (task.folder / "preferences.jsonl").read_text().splitlines()
    scrambled = []
    for line in lines:
        raw = json.loads(line)
        if raw["split"] == "heldout":
            raw["chosen"], raw["rejected"] = raw["rejected"], "Whatever. Buy it today, $5,000 off!"
        scrambled.append(json.dumps(raw))
    path = tmp_path / "preferences.jsonl"
    path.write_text("\n".join(scrambled) + "\n")
    dev = PreferenceReward(task, split="dev", features=features)
    other = PreferenceReward(task, split="dev", pairs_file=str(path), features=features)
    assert np.allclose(dev.weights.numpy(), other.weights.numpy())
    assert (dev.weights >= 0).all()  # signs live in the features: no signal learned backwards
    default = PreferenceReward(task, features=features)
    later = [(task.folder / f"preferences_{s}.jsonl").read_text().splitlines() for s in FIT_SPLITS[2:]]
    assert default.n_pairs == len(lines) + sum(map(len, later))  # dev + heldout + fresh + audit … audit7
    scrambled_default = PreferenceReward(task, pairs_file=str(path), features=features)
    assert not np.allclose(default.weights.numpy(), scrambled_default.weights.numpy())


def test_preference_model_generalises_across_folds(task, features):
    """4-fold CV (stratified by category) over dev + heldout + fresh + audit (512 pairs): measured 97 %,
    min category 91 % with the reader probe (91 % and 84 % with the hand-made features alone).

    The floors sit a few points under the measured figures, so a change that costs generalisation
    (a feature learned from one half's wording) fails here before it reaches the benchmark.
    """
    from rlprompt.preferences import stratified_folds
    from rlprompt.rewards.preference import PreferenceReward

    pairs = load_pairs(task, splits=("dev", "heldout", "fresh", "audit"))
    folds = stratified_folds(pairs, 4, seed=0)
    assert all(Counter(p.category for p, f in zip(pairs, folds) if f == 0).values())
    wins = []
    for k in range(4):
        model = PreferenceReward(task, pairs=[p for p, f in zip(pairs, folds) if f != k], features=features)
        test = [p for p, f in zip(pairs, folds) if f == k]
        chosen = model.raw([(p.scenario, p.scenario.customer, p.chosen) for p in test])
        rejected = model.raw([(p.scenario, p.scenario.customer, p.rejected) for p in test])
        wins += [(p.category, bool(c > r)) for p, c, r in zip(test, chosen, rejected)]
    overall = np.mean([w for _, w in wins])
    per_category = {c: np.mean([w for x, w in wins if x == c]) for c in CATEGORIES}
    assert overall >= 0.94, overall
    assert min(per_category.values()) >= 0.87, per_category


def _share_reader_memo(tmp_path) -> None:
    """Tests that move the cache to tmp_path keep the reader's pair vectors (rewards/reader.py):
    what they check is the feature memo, and re-reading 256 replies cost ~40 s of CI each."""
    import shutil

    from rlprompt.models import cache_root

    if (cache_root() / "reader").is_dir():
        shutil.copytree(cache_root() / "reader", tmp_path / "reader")


def test_pair_features_are_memoised_on_disk_and_keyed_by_the_pairs(task, tmp_path, monkeypatch):
    """The fit reads its pair features from disk when nothing they depend on changed, recomputes
    them when the memo is unreadable, and a different set of pairs gets its own file. (The dev
    half, 128 pairs: the memo is the same code for any pairs, at a fifth of the embedding time.)"""
    import torch

    from rlprompt.rewards.preference import PairFeatures, PreferenceReward

    _share_reader_memo(tmp_path)
    monkeypatch.setenv("RLPROMPT_CACHE", str(tmp_path))
    first = PreferenceReward(task, split="dev")
    files = list((tmp_path / "preference").glob("*.pt"))
    assert len(files) == 1

    def refuse(self, items):
        raise AssertionError("pair features recomputed although memoised")

    with monkeypatch.context() as patched:
        patched.setattr(PairFeatures, "__call__", refuse)
        again = PreferenceReward(task, split="dev")  # from the file alone
        assert torch.equal(again.weights, first.weights) and again.offset == first.offset
        files[0].write_bytes(b"not a torch file")
        with pytest.raises(AssertionError, match="recomputed"):
            PreferenceReward(task, split="dev")  # unreadable memo: recomputed (here: refused)
    PreferenceReward(task, split="dev")  # rewrites it
    assert torch.equal(PreferenceReward(task, split="dev").weights, first.weights)
    PreferenceReward(task, split="heldout")
    assert len(list((tmp_path / "preference").glob("*.pt"))) == 2  # other pairs, other key


def test_the_reward_a_run_builds_reads_the_memo_too(task, tmp_path, monkeypatch):
    """`reward_from_config` hands the module the shared MiniLM embedder; the memo once counted that
    as custom features and was skipped, so every run, compare method and test re-embedded all pairs
    (50 s at one thread). The shared embedder is the default one: its features are memoised."""
    import torch

    from rlprompt.config import RewardConfig
    from rlprompt.rewards.factory import reward_from_config
    from rlprompt.rewards.preference import PairFeatures

    _share_reader_memo(tmp_path)
    monkeypatch.setenv("RLPROMPT_CACHE", str(tmp_path))
    cfg = RewardConfig(
        name="preference", modules={"preference": 1.0}, options={"preference": {"split": "dev"}}
    )
    first = reward_from_config(cfg, task, None)
    assert len(list((tmp_path / "preference").glob("*.pt"))) == 1

    def refuse(self, items):
        raise AssertionError("pair features recomputed although memoised")

    monkeypatch.setattr(PairFeatures, "__call__", refuse)
    again = reward_from_config(cfg, task, None)
    (module, _), (before, _) = again.reward.modules["preference"], first.reward.modules["preference"]
    assert torch.equal(module.weights, before.weights)


def test_the_reader_memo_is_read_back_and_the_probe_generalises_to_pairs_it_never_saw(
    task, tmp_path, monkeypatch
):
    """The reader's vectors of the pair replies persist on disk, so a second reader (another run,
    another test) never loads the LM for them; and a probe fit on the dev pairs alone orders the
    heldout pairs the way the expert does (measured 98 %)."""
    import torch

    from rlprompt.rewards import reader as reader_module
    from rlprompt.rewards.reader import ReaderProbe, ReplyReader

    monkeypatch.setenv("RLPROMPT_CACHE", str(tmp_path))
    pairs = load_pairs(task, splits=("dev", "heldout"))
    dev = [p for p in pairs if p.split == "dev"][:16]
    first = ReplyReader(task.base_instruction)
    vectors = first([(p.scenario, p.chosen) for p in dev], persist=True)
    assert vectors.shape == (16, 576) and first.file.is_file()

    def refuse(*args):
        raise AssertionError("the LM was loaded although the vectors are on disk")

    monkeypatch.setattr(reader_module, "_load", refuse)
    monkeypatch.setattr(reader_module, "_MEMOS", {})  # another process: only the file is left
    again = ReplyReader(task.base_instruction)([(p.scenario, p.chosen) for p in dev])
    assert torch.allclose(again, vectors)
    # the same reply after another customer turn is read differently: the context is part of the key
    other = [(dev[1].scenario, dev[0].chosen)]
    with pytest.raises(AssertionError, match="the LM was loaded"):
        ReplyReader(task.base_instruction)(other)
    monkeypatch.undo()

    reader = ReplyReader(task.base_instruction)  # the shared memo (warm after the first run)
    read = {s: [p for p in pairs if p.split == s] for s in ("dev", "heldout")}
    chosen = {s: reader([(p.scenario, p.chosen) for p in ps], persist=True) for s, ps in read.items()}
    rejected = {s: reader([(p.scenario, p.rejected) for p in ps], persist=True) for s, ps in read.items()}
    probe = ReaderProbe.fit(chosen["dev"], rejected["dev"])
    accuracy = float((probe(chosen["heldout"]) > probe(rejected["heldout"])).float().mean())
    assert accuracy >= 0.8, accuracy


def test_readers_in_one_process_share_one_memo_read_once_and_keyed_by_version_not_source(
    task, tmp_path, monkeypatch
):
    """A comparison builds the reward eight times: the reader's file is loaded once per process and
    every build sees the vectors the others read. The file is named by READER_VERSION, the model,
    the dtype and the system prompt, so editing a comment in reader.py does not recompute 2,048 vectors."""
    import torch

    from rlprompt.rewards import reader as reader_module
    from rlprompt.rewards.reader import ReplyReader

    monkeypatch.setenv("RLPROMPT_CACHE", str(tmp_path))
    dev = [p for p in load_pairs(task, splits=("dev",))][:2]
    items = [(p.scenario, p.chosen) for p in dev]
    ReplyReader(task.base_instruction)(items, persist=True)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(reader_module.torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.setattr(
        reader_module, "_load", lambda *a: pytest.fail("the LM was loaded for memoised replies")
    )
    builds = [ReplyReader(task.base_instruction) for _ in range(3)]
    assert all(b.memo is builds[0].memo for b in builds) and loads == []  # in memory already: no file read
    monkeypatch.setattr(reader_module, "_MEMOS", {})
    first, second = ReplyReader(task.base_instruction), ReplyReader(task.base_instruction)
    assert len(loads) == 1 and first.memo is second.memo and len(first.memo) == 2

    monkeypatch.setattr(reader_module, "_MEMOS", {})
    monkeypatch.setattr(reader_module.Path, "read_bytes", lambda self: b"edited source")
    assert ReplyReader(task.base_instruction).file == first.file
    monkeypatch.setattr(reader_module, "READER_VERSION", reader_module.READER_VERSION + 1)
    assert ReplyReader(task.base_instruction).file != first.file


def test_the_reader_file_keeps_the_pair_vectors_and_never_a_runs_target_replies(task, tmp_path, monkeypatch):
    """A run reads its target's replies through the same in-memory memo as the pairs; when the pair
    vectors are then written (persist=True), only they go to disk: the file once grew by every
    reply a run had scored before the fit wrote it."""
    import torch

    from rlprompt.rewards import reader as reader_module
    from rlprompt.rewards.reader import ReplyReader

    monkeypatch.setenv("RLPROMPT_CACHE", str(tmp_path))
    monkeypatch.setattr(reader_module, "_MEMOS", {})
    pair = load_pairs(task, splits=("dev",))[0]
    reader = ReplyReader(task.base_instruction)
    reader([(pair.scenario, "A reply the target wrote during a run.")])  # scored, not persisted
    assert not reader.file.exists()
    reader([(pair.scenario, pair.chosen)], persist=True)
    on_disk = torch.load(reader.file, weights_only=True)
    assert list(on_disk) == [reader._key(pair.scenario, pair.chosen)] and len(reader.memo) == 2


def test_one_bradley_terry_fit_serves_both_models_free_or_nonnegative():
    """The probe (free weights) and `preference` (weights >= 0) share one minimiser; on pairs where a
    feature is preferred backwards, only the free fit may give it a negative weight, and both order
    the pairs they were fit on."""
    import torch

    from rlprompt.rewards.bradley_terry import fit_bradley_terry

    g = torch.Generator().manual_seed(0)
    rejected = torch.randn(200, 3, generator=g)
    truth = torch.tensor([1.0, -1.0, 0.0])
    chosen = rejected + torch.randn(200, 3, generator=g) * 0.3 + truth
    free = fit_bradley_terry(chosen, rejected, l2=0.01, nonnegative=False)
    clamped = fit_bradley_terry(chosen, rejected, l2=0.01, nonnegative=True)
    assert free[0] > 0.5 and free[1] < -0.5
    assert (clamped >= 0).all() and clamped[1] < 0.05 and clamped[0] > 0.5
    assert float(((chosen - rejected) @ free > 0).float().mean()) > 0.95


def test_the_reader_stops_at_its_layer_with_the_states_a_full_pass_gives_and_leaves_no_hook():
    """`_hidden_states` ends the forward pass at READER_LAYER with a hook; the states must be those
    of a full pass (hidden_states[READER_LAYER]) and the shared model must be left without hooks."""
    import torch

    from rlprompt.models import load_model
    from rlprompt.rewards import reader as reader_module

    model, tokenizer = reader_module._load(reader_module.READER_MODEL, reader_module.READER_DTYPE)
    ids = torch.tensor([tokenizer("Happy to help. What will you mostly use the car for?")["input_ids"]])
    mask = torch.ones_like(ids)
    hooks = [dict(layer._forward_hooks) for layer in model.model.layers]
    stopped = reader_module._hidden_states(model, ids, mask, reader_module.READER_LAYER)
    assert [dict(layer._forward_hooks) for layer in model.model.layers] == hooks  # ours is gone
    # the full pass on a copy of its own: output_hidden_states leaves capture hooks on the model it runs
    reference, _ = load_model(reader_module.READER_MODEL, reader_module.READER_DTYPE, device="cpu")
    with torch.no_grad():
        full = reference.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert stopped.shape == full[reader_module.READER_LAYER].shape
    assert torch.allclose(stopped.float(), full[reader_module.READER_LAYER].float())
    assert not torch.allclose(stopped.float(), full[-1].float())  # not the final states
