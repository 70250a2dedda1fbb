"""src/no_telemetry.py: with usage stats off the engine starts without Ray's
usage records; with them on, Ray's method runs unchanged. And the Ray names it
relies on are still what it expects (fails loudly on a Ray upgrade)."""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
from typing import Any

import pytest

import first_chunk
import llm_config
import no_telemetry
from settings import parse_settings


def calls_in(function: Any) -> set[str]:
    """The names a function calls (dotted for attributes), read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}


def test_rays_start_engine_does_only_what_the_override_accounts_for() -> None:
    """The override keeps the engine start and drops the two usage records; a
    Ray upgrade that adds any other step to _start_engine must fail here, not
    be skipped silently in a replica."""
    from ray.llm._internal.serve.core.server.llm_server import LLMServer

    assert calls_in(LLMServer._start_engine) == {
        "ValueError", "self.engine.start", "push_telemetry_report_for_all_models", "record_extra_usage_tag"}
    assert "await asyncio.wait_for(self._start_engine()" in inspect.getsource(LLMServer.start)


@pytest.mark.parametrize(("value", "enabled"), [("0", False), ("1", True)])
def test_rays_own_switch_reads_the_setting(monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool) -> None:
    from ray._common.usage.usage_lib import usage_stats_enabled

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", value)
    assert usage_stats_enabled() is enabled


class StandInEngine:
    """Stands in for vLLM (no engine on a unit test): records its start."""

    def __init__(self) -> None:
        self.started = 0

    async def start(self) -> None:
        self.started += 1


@pytest.mark.parametrize(("value", "reports"), [("0", 0), ("1", 1)])
def test_the_report_is_skipped_only_with_usage_stats_off(monkeypatch: pytest.MonkeyPatch,
                                                          value: str, reports: int) -> None:
    from ray.llm._internal.serve.core.server import llm_server

    pushed: list[object] = []
    # Ray's report function replaced in Ray's module: with usage stats on,
    # Ray's own _start_engine (reached through super()) must call it.
    monkeypatch.setattr(llm_server, "push_telemetry_report_for_all_models",
                        lambda all_models: pushed.append(all_models))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", value)
    server = no_telemetry.NoTelemetryLLMServer.__new__(no_telemetry.NoTelemetryLLMServer)
    server.engine, server._llm_config = StandInEngine(), object()
    asyncio.run(server._start_engine())
    assert server.engine.started == 1
    assert len(pushed) == reports


def test_every_model_server_class_derives_from_it() -> None:
    import engine_watchdog

    for cls in (first_chunk.FirstChunkLLMServer, engine_watchdog.WatchedLLMServer):
        assert issubclass(cls, no_telemetry.NoTelemetryLLMServer)
    assert no_telemetry.NoTelemetryLLMServer.__module__ == "no_telemetry"
    for env in ({"WATCHDOG_TIMEOUT": "0", "STREAM_FIRST_CHUNK_AT_ONCE": "0"}, {"WATCHDOG_TIMEOUT": "0"}, {}):
        config = llm_config.llm_config(parse_settings({"MODEL_ID": "m", **env}))
        assert config["server_cls"] in (first_chunk.FIRST_CHUNK_SERVER_CLS, llm_config.WATCHED_SERVER_CLS), env
