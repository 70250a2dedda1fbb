"""Tests for tools/make-tiny-model.py (builds only; vLLM is not started)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "tools" / "make-tiny-model.py"
MARKER = ".tiny-model-complete"
EXPECTED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    MARKER,
)


def run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """Keep in-process transformers away from the Hub, for this module only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        yield


@pytest.fixture(scope="module")
def tiny() -> ModuleType:
    """The script, imported as a module (importing it must do no work)."""
    spec = importlib.util.spec_from_file_location("make_tiny_model", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "dont_write_bytecode", True)  # no scripts/__pycache__
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny: ModuleType) -> dict[str, Path]:
    """Builds shared by all tests: seed 0 via the CLI and again in-process
    (so determinism is checked across processes), and seed 1 in-process (the
    in-process builds skip the few seconds of torch/transformers import)."""
    root = tmp_path_factory.mktemp("tiny")
    result = run_script(root / "a", "--seed", "0")
    assert result.returncode == 0, result.stderr
    assert "built" in result.stderr
    assert tiny.make_tiny_model(root / "a_again", 0, False) is True
    assert tiny.make_tiny_model(root / "b", 1, False) is True
    return {"a": root / "a", "a_again": root / "a_again", "b": root / "b"}


@pytest.fixture(scope="module")
def tokenizer(models: dict[str, Path]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models["a"])


def load_tensors(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def test_files_present_and_no_leftovers(models: dict[str, Path]) -> None:
    for name in EXPECTED_FILES:
        assert (models["a"] / name).is_file(), name
    assert json.loads((models["a"] / MARKER).read_text())["seed"] == 0
    # Only the three model folders: no temp/old folders left next to them.
    assert sorted(p.name for p in models["a"].parent.iterdir()) == ["a", "a_again", "b"]


def test_config(models: dict[str, Path], tokenizer: Any) -> None:
    config = json.loads((models["a"] / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["model_type"] == "llama"
    expected = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "head_dim": 32,
        "num_key_value_heads": 1,
        "intermediate_size": 128,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
    }
    assert {key: config[key] for key in expected} == expected
    assert config.get("dtype", config.get("torch_dtype")) == "float32"
    assert config["vocab_size"] == len(tokenizer)
    assert 1000 <= config["vocab_size"] <= 2000

    generation = json.loads((models["a"] / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|im_end|>"


def test_weights_shapes_and_dtype(models: dict[str, Path]) -> None:
    import torch

    tensors = load_tensors(models["a"])
    config = json.loads((models["a"] / "config.json").read_text())
    vocab = config["vocab_size"]
    assert tensors["model.embed_tokens.weight"].shape == (vocab, 64)
    assert tensors["lm_head.weight"].shape == (vocab, 64)  # untied: stored apart
    assert tensors["model.layers.1.self_attn.k_proj.weight"].shape == (32, 64)
    assert tensors["model.layers.1.self_attn.q_proj.weight"].shape == (64, 64)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert all(bool(torch.isfinite(t).all()) for t in tensors.values())


def test_deterministic_per_seed(models: dict[str, Path]) -> None:
    import torch

    a = (models["a"] / "model.safetensors").read_bytes()
    a_again = (models["a_again"] / "model.safetensors").read_bytes()
    assert a == a_again
    for name in ("tokenizer.json", "config.json"):
        assert (models["a"] / name).read_bytes() == (models["a_again"] / name).read_bytes()

    tensors_a, tensors_b = load_tensors(models["a"]), load_tensors(models["b"])
    assert tensors_a.keys() == tensors_b.keys()
    assert not torch.equal(tensors_a["lm_head.weight"], tensors_b["lm_head.weight"])
    assert json.loads((models["b"] / MARKER).read_text())["seed"] == 1


def test_tokenizer_round_trip(tokenizer: Any) -> None:
    for text in (
        "The quick brown fox jumps over the lazy dog.",
        "Unseen words: zyxwvut, café, naïve, 東京, emoji 🚀 and\ttabs\nnewlines.",
    ):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert max(ids) < len(tokenizer)
        assert tokenizer.decode(ids) == text
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert tokenizer.encode(token, add_special_tokens=False) == [
            tokenizer.convert_tokens_to_ids(token)
        ]
    assert tokenizer.bos_token and tokenizer.eos_token and tokenizer.pad_token


def test_chat_template(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi."},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nSay hi.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without.endswith("Say hi.<|im_end|>\n")
    # OpenAI-style list content keeps only the text parts.
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}]
    assert tokenizer.apply_chat_template(parts, tokenize=False) == (
        "<|im_start|>user\nSay hi.<|im_end|>\n"
    )


def test_loads_in_transformers(models: dict[str, Path], tokenizer: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models["a"])
    ids = tokenizer("Hello world", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))


def test_second_run_is_noop(models: dict[str, Path]) -> None:
    out = models["a"]
    marker_before = (out / MARKER).stat()
    weights_before = (out / "model.safetensors").stat()
    started = time.monotonic()
    result = run_script(out, "--seed", "0")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "already complete" in result.stderr
    assert elapsed < 3, f"no-op run took {elapsed:.1f}s"
    assert (out / MARKER).stat().st_mtime_ns == marker_before.st_mtime_ns
    assert (out / MARKER).stat().st_ino == marker_before.st_ino
    assert (out / "model.safetensors").stat().st_ino == weights_before.st_ino


def test_seed_change_and_force_rebuild(
    tmp_path: Path, tiny: ModuleType, models: dict[str, Path]
) -> None:
    out = tmp_path / "m"
    shutil.copytree(models["a"], out)
    assert tiny.make_tiny_model(out, 0, False) is False  # complete: no-op
    # A different seed is a different model: rebuilt in place without --force.
    assert tiny.make_tiny_model(out, 1, False) is True
    assert json.loads((out / MARKER).read_text())["seed"] == 1
    weights = (out / "model.safetensors").read_bytes()
    assert weights == (models["b"] / "model.safetensors").read_bytes()
    inode = (out / "model.safetensors").stat().st_ino
    # --force rebuilds a complete model; same seed, same bytes.
    assert tiny.make_tiny_model(out, 1, True) is True
    assert (out / "model.safetensors").stat().st_ino != inode
    assert (out / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_interrupted_build_leaves_nothing(
    tmp_path: Path, tiny: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(out_dir: Path, tokenizer: Any, seed: int) -> None:
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "build_model", fail)
    with pytest.raises(KeyboardInterrupt):
        tiny.make_tiny_model(tmp_path / "m", 0, False)
    assert list(tmp_path.iterdir()) == []


def test_refuses_foreign_nonempty_dir(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = run_script(out)
    assert result.returncode == 1
    assert "--force" in result.stderr
    assert (out / "notes.txt").read_text() == "keep me"


def test_help() -> None:
    result = run_script("--help")
    assert result.returncode == 0
    assert "OUT_DIR" in result.stdout and "--seed" in result.stdout
