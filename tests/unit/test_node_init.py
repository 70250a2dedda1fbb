"""src/node_init.py: Ray's per-node download task is skipped when Ray would
download nothing, kept when a cloud source needs it; and the Ray names it
relies on are still what it expects (fails loudly on a Ray upgrade)."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

import llm_config
import node_init
from settings import parse_settings


def ray_llm_config(tmp_path: Path, source: str) -> object:
    from ray.serve.llm import LLMConfig

    settings = parse_settings({"MODEL_ID": "org/m", "MODEL_SOURCE": str(tmp_path), "DEVICE": "cpu"})
    config = llm_config.llm_config(settings)
    config["model_loading_config"]["model_source"] = source
    return LLMConfig(**config)


@pytest.mark.parametrize(("source", "runs_ray_task"), [
    ("local", False), ("org/m", False), ("s3://bucket/m", True), ("gs://bucket/m", True)])
def test_the_task_runs_only_for_a_cloud_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               source: str, runs_ray_task: bool) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = ray_llm_config(tmp_path, str(tmp_path) if source == "local" else source)
    # Ray builds the callback from LLMConfig.callback_config by import path.
    from ray.llm._internal.common.utils.import_utils import load_class

    callback = load_class(config.callback_config.callback_class)(llm_config=config)
    assert callback.ctx.run_init_node is True
    asyncio.run(callback.run_callback("on_before_node_init"))
    assert callback.ctx.run_init_node is runs_ray_task
    # What the skipped task would have done on this node, done here instead.
    assert (tmp_path / "torch" / "kernels").is_dir() is not runs_ray_task


def test_every_model_carries_the_callback() -> None:
    config = llm_config.llm_config(parse_settings({"MODEL_ID": "m"}))
    assert config["callback_config"] == {"callback_class": node_init.NODE_INIT_CALLBACK_CLS}


def test_without_a_mirror_rays_task_only_hands_back_the_model_id(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """What makes skipping it safe: Ray's own download function, run for real."""
    from ray.llm._internal.common.utils.download_utils import download_model_files

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert download_model_files(model_id=str(tmp_path), mirror_config=None) == str(tmp_path)
    assert download_model_files(model_id="org/m", mirror_config=None) == "org/m"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["torch"]


def test_the_ray_names_it_relies_on_are_still_there() -> None:
    """VLLMEngine.start runs initialize_node only when ctx.run_init_node, after
    on_before_node_init; initialize_node's task calls download_model_files
    with the engine config's mirror and model id, which nothing_to_download
    reads."""
    from ray.llm._internal.common.callbacks.base import CallbackCtx
    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
    from ray.llm._internal.serve.utils import node_initialization_utils

    start = inspect.getsource(VLLMEngine.start)
    before, init = start.index('"on_before_node_init"'), start.index("if callback.ctx.run_init_node:")
    assert before < init < start.index("await initialize_node(self.llm_config)"), start
    remote = inspect.getsource(node_initialization_utils.initialize_remote_node)
    for name in ("download_model_files(", "engine_config.actual_hf_model_id", "engine_config.mirror_config"):
        assert name in remote, name
    assert "run_init_node" in CallbackCtx.__dataclass_fields__
