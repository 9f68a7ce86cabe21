"""Optimizer logic: OPRO's meta-prompt, the bandit's exact retirement rule and mutant prior,
candidate post-processing, budgets that are never exceeded, and exact resume.

Pure-logic checks use an echo target (it replies with its system prompt and the customer turn)
and a scripted optimizer LLM, so they test the bookkeeping, not sales quality; the PPO wrappers
load the real SmolLM2 policy backbone (slow). The real-model comparison is tests/test_compare.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import integrate, special, stats

from rlprompt.build import TARGETS
from rlprompt.config import validate
from rlprompt.errors import ConfigError
from rlprompt.optimizers import OPTIMIZERS, run_optimizer
from rlprompt.optimizers.bandit import mutant_prior, retire_probability
from rlprompt.optimizers.base import OPTIMIZER_CONFIGS
from rlprompt.optimizers.llm import extract_instruction, filter_candidates
from rlprompt.optimizers.opro import render_meta_prompt
from rlprompt.targets.base import Reply

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class EchoTarget:
    target_id = "echo-optimizers"

    def generate(self, conversations, params):
        return [
            Reply(
                text=(c[0]["content"] if c[0]["role"] == "system" else "") + " " + c[-1]["content"],
                prompt_tokens=0,
                completion_tokens=0,
            )
            for c in conversations
        ]


class ScriptedLLM:
    """Answers like an optimizer LLM; the seed picks one of a few instructions (so some repeat)."""

    target_id = "scripted-llm"

    def generate(self, conversations, params):
        return [
            Reply(
                text=f"Here it is: <INS>Greet the customer, ask one question, offer a test drive (v{params.seed % 5}).</INS>",
                prompt_tokens=0,
                completion_tokens=0,
            )
            for _ in conversations
        ]


for _name, _cls in (("echo_opt", EchoTarget), ("scripted_llm", ScriptedLLM)):
    if _name not in TARGETS:
        TARGETS.register(_name)(lambda cfg, retry_counter, _cls=_cls: _cls())


FAKE_SETTINGS = {
    "score_subset": 3,
    "optimizer_target": "scripted_llm",
    "retire_every": 6,
    "portfolio_size": 8,
}


def fake_run(name: str, tmp_path: Path, **optimizer) -> dict:
    """A small run of `name` on the echo target; FAKE_SETTINGS where the method has such a key."""
    valid = {f.name for f in fields(OPTIMIZER_CONFIGS.get(name))}
    return {
        "target": {"name": "echo_opt"},
        "reward": {"modules": {"rubric": 1.0, "length": 0.5}},
        "optimizer": {
            "name": name,
            **{k: v for k, v in FAKE_SETTINGS.items() if k in valid},
            **optimizer,
        },
        "cache": {"path": str(tmp_path / "shared.sqlite")},
        "threads": 1,
    }


# ---------------------------------------------------------------------- OPRO meta-prompt


def test_meta_prompt_lists_top_20_ascending_with_integer_scores():
    rng = np.random.default_rng(0)
    history = [(f"instruction number {i}", float(s)) for i, s in enumerate(rng.random(27))]
    exemplars = [(f"customer says {i}", f"good reply {i}") for i in range(3)]
    meta = render_meta_prompt(history, exemplars, "car salesperson", top=20)
    shown = re.findall(r"text:\n(instruction number \d+)\nscore:\n(.+)\n", meta)
    assert len(shown) == 20
    scores = [int(s) for _, s in shown]  # integers, as the paper shows them
    assert all(0 <= s <= 100 for s in scores)
    assert scores == sorted(scores)  # ascending: the best is last, next to the request
    best20 = sorted(history, key=lambda h: h[1])[-20:]
    assert [t for t, _ in shown] == [t for t, _ in best20]
    assert scores == [round(100 * s) for _, s in best20]
    assert meta.count("System: <INS>") == 3 and all(f"good reply {i}" in meta for i in range(3))
    assert meta.rstrip().endswith("Write the text between <INS> and </INS>.")
    assert meta.index("score:") < meta.index("input:")  # history first, then exemplars, then the request


def test_instruction_extraction_and_filters():
    assert extract_instruction("ok <INS> Be kind. </INS> done") == "Be kind."
    assert extract_instruction("<INS>Unclosed tag instruction here") == "Unclosed tag instruction here"
    assert extract_instruction("Text: [Ask about the budget first.]") == "Ask about the budget first."
    seen = {"be warm and honest with every customer"}
    kept = filter_candidates(
        ["Be warm and HONEST with every   customer", "short", "x" * 600, None, "A new, longer instruction."]
        * 2,
        seen,
        min_chars=10,
        max_chars=500,
    )
    assert kept == ["A new, longer instruction."]


# ---------------------------------------------------------------------- bandit math


def closed_form(a_i: int, b_i: int, a_best: int, b_best: int) -> float:
    """P(X_i > X_best) for integer parameters (Miller 2014, 'Formulas for Bayesian A/B testing')."""
    total = 0.0
    for k in range(a_i):
        total += math.exp(
            special.betaln(a_best + k, b_best + b_i)
            - math.log(b_i + k)
            - special.betaln(1 + k, b_i)
            - special.betaln(a_best, b_best)
        )
    return total


@pytest.mark.parametrize(
    "a_i,b_i,a_best,b_best",
    [(1, 1, 1, 1), (2, 5, 5, 2), (10.5, 3.2, 4.1, 8.7), (30, 70, 35, 65), (1.5, 1.0, 80, 20), (3, 9, 40, 12)],
)
def test_retire_probability_matches_quadrature_and_monte_carlo(a_i, b_i, a_best, b_best):
    p = retire_probability(a_i, b_i, a_best, b_best)
    reference, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, a_i, b_i) * stats.beta.cdf(x, a_best, b_best), 0, 1, limit=500
    )
    assert p == pytest.approx(reference, abs=1e-6)
    rng = np.random.default_rng(0)
    n = 400_000
    mc = float(np.mean(rng.beta(a_i, b_i, n) > rng.beta(a_best, b_best, n)))
    assert p == pytest.approx(mc, abs=4 * math.sqrt(max(mc * (1 - mc), 1e-4) / n) + 1e-3)
    if all(float(v).is_integer() for v in (a_i, b_i, a_best, b_best)):
        assert p == pytest.approx(closed_form(int(a_i), int(b_i), int(a_best), int(b_best)), abs=1e-8)


def test_retire_probability_handles_peaked_posteriors():
    # f_i concentrated in a sliver of [0, 1]: plain quad over [0, 1] can miss it entirely
    p = retire_probability(5000, 5000, 4800, 5200)
    assert p == pytest.approx(1 - stats.norm.cdf(0, loc=0.02, scale=math.sqrt(2 * 0.25 / 10001)), abs=1e-3)


def test_mutant_prior_inherits_mean_with_effective_sample_size():
    a, b = mutant_prior(0.7, n_best=10, ess_min=10, ess_frac=0.2)  # 0.2 × 10 = 2 < 10 → ESS 10
    assert (a + b, a / (a + b)) == pytest.approx((10.0, 0.7))
    a, b = mutant_prior(0.6, n_best=200, ess_min=10, ess_frac=0.2)  # 0.2 × 200 = 40 > 10
    assert (a + b, a / (a + b)) == pytest.approx((40.0, 0.6))


# ---------------------------------------------------------------------- configs


def test_every_optimizer_has_a_config_file_listing_exactly_its_dataclass_fields():
    """Every key of the method's dataclass is in its file (so `optimizer.<key>=` overrides work
    without `+`), and no other method's key is."""
    for name in OPTIMIZERS.names():
        raw = yaml.safe_load((CONFIGS / "optimizer" / f"{name}.yaml").read_text())
        # a defaults list may only select another group (components: its policy), never share defaults
        selects = [key for entry in raw.pop("defaults", []) for key in entry]
        assert all(key.startswith("override /") for key in selects), (name, selects)
        assert raw["name"] == name
        assert set(raw) == {f.name for f in fields(OPTIMIZER_CONFIGS.get(name))}, name


def test_a_key_of_another_optimizer_lists_this_optimizers_keys():
    with pytest.raises(
        ConfigError,
        match=r"'optimizer' has no field 'lr'. Valid fields: name, budget, private_cache, score_subset, steps",
    ):
        validate({"optimizer": {"name": "opro", "lr": 1e-4}})
    assert set(OPTIMIZER_CONFIGS.names()) == set(OPTIMIZERS.names())


# ---------------------------------------------------------------------- budgets and resume


@pytest.mark.parametrize("name", ["manual", "template", "random", "opro", "bandit"])
@pytest.mark.parametrize("budget", [2, 13])
def test_prompt_search_never_exceeds_its_budget(tmp_path, name, budget):
    steps = {} if name in ("manual", "template") else {"steps": 50}  # those two have no steps
    run = validate(fake_run(name, tmp_path, budget=budget, **steps))
    result = run_optimizer(run, tmp_path / name)
    assert result.target_calls <= budget
    assert all(calls <= budget for calls, _ in result.curve)
    assert result.prompts.task_level.system_prompt.strip()
    expected_source = {"manual": "hand-written", "template": "rules", "random": "uniform over allowed tokens"}
    assert result.prompts.source_model == expected_source.get(
        name, "smollm2-135m-instruct"
    )  # opro, bandit: their LLM
    assert (tmp_path / name / "prompts.json").exists() and (tmp_path / name / "result.json").exists()


def test_opro_proposes_scores_and_resumes_exactly(tmp_path):
    full = run_optimizer(validate(fake_run("opro", tmp_path, steps=3)), tmp_path / "full")
    assert full.extra["candidates_scored"] > 0 and full.optimizer_llm_calls > 0
    run_optimizer(validate(fake_run("opro", tmp_path, steps=1)), tmp_path / "split")
    resumed_run = validate({**fake_run("opro", tmp_path, steps=3), "resume": str(tmp_path / "split")})
    resumed = run_optimizer(resumed_run, tmp_path / "split")
    assert resumed.curve == full.curve
    assert resumed.prompts == full.prompts
    assert resumed.target_calls == full.target_calls


def test_bandit_retires_refills_and_resumes_exactly(tmp_path):
    full = run_optimizer(validate(fake_run("bandit", tmp_path, steps=36)), tmp_path / "full")
    assert full.extra["plays"] == 36 and full.extra["mutants"] >= 1
    run_optimizer(validate(fake_run("bandit", tmp_path, steps=18)), tmp_path / "split")
    resumed_run = validate({**fake_run("bandit", tmp_path, steps=36), "resume": str(tmp_path / "split")})
    resumed = run_optimizer(resumed_run, tmp_path / "split")
    assert resumed.curve == full.curve and resumed.extra == full.extra


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppo", "components"])
def test_ppo_wrappers_never_exceed_their_budget(tmp_path, name):
    run = fake_run(name, tmp_path, budget=13, contexts_per_step=2, prompts_per_context=4, ppo_epochs=1)
    run["policy"] = {"conditioning": "task_level", "prompt_length": 2}
    if name == "components":  # a plain dict gets no Hydra defaults list: name the action set
        run["policy"]["action_space"] = "components"
    result = run_optimizer(validate(run), tmp_path / name)
    assert 0 < result.target_calls <= 13  # one step of 8 calls; the second would overspend
    assert result.extra["steps"] == 1 and len(result.curve) == 1
    assert result.prompts.method == name
    assert result.prompts.action_space == ("components" if name == "components" else "tokens")


@pytest.mark.slow
def test_ppo_with_no_steps_ships_the_untrained_greedy_prompt_under_any_budget(tmp_path):
    """The ablation's `ppo-untrained` control: a budget must not turn steps=0 into a training run."""
    shipped = {}
    for seed in (0, 1):
        run = fake_run("ppo", tmp_path, budget=13, steps=0, contexts_per_step=2, prompts_per_context=4)
        run["policy"] = {"conditioning": "task_level", "prompt_length": 4}
        run["seed"] = seed
        result = run_optimizer(validate(run), tmp_path / f"seed{seed}")
        assert result.target_calls == 0 and result.extra["steps"] == 0 and result.curve == []
        shipped[seed] = [e.text for e in result.prompts.entries]
    # the residual head starts at the frozen LM: the greedy prompt does not depend on the seed
    assert shipped[0] == shipped[1] and shipped[0][0].strip()
