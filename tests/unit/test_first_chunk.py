"""src/first_chunk.py: the first chunk leaves at once, the rest keeps Ray's
batching; and the two private Ray names it overrides are still what it expects.

The batcher runs for real on asyncio: a fake engine stream (an async
generator the test holds open with an event) feeds Ray's Batcher and ours.
With a 60 s interval, Ray's first batch cannot come before the engine's
stream ends; ours comes while the engine is still generating. No timing is
measured; the 5 s bounds only stop a broken test from hanging.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, AsyncGenerator

import pytest

import first_chunk
import llm_config
from settings import parse_settings

INTERVAL_MS = 60_000


class Engine:
    """An engine stream: yields FIRST, waits for `more`, yields REST (or raises)."""

    def __init__(self, first: list[str], rest: list[str], fail: Exception | None = None) -> None:
        self.first, self.rest, self.fail = first, rest, fail
        self.more = asyncio.Event()

    async def stream(self) -> AsyncGenerator[str, None]:
        for item in self.first:
            yield item
        await self.more.wait()
        for item in self.rest:
            yield item
        if self.fail is not None:
            raise self.fail


def test_first_chunk_leaves_before_the_interval_and_the_rest_is_batched() -> None:
    async def scenario() -> list[list[str]]:
        engine = Engine(["a"], ["b", "c"])
        stream = first_chunk.FirstChunkBatcher(engine.stream(), interval_ms=INTERVAL_MS).stream()
        first = await asyncio.wait_for(stream.__anext__(), 5)  # the engine is still generating
        engine.more.set()
        return [first] + [batch async for batch in stream]

    assert asyncio.run(scenario()) == [["a"], ["b", "c"]]


def test_ray_batcher_holds_the_first_chunk_until_a_tick_or_the_end() -> None:
    """What the override is for (measured in the pinned Ray, not assumed)."""
    from ray.llm._internal.serve.utils.batcher import Batcher as ray_batcher  # noqa: N813

    async def scenario() -> bool:
        engine = Engine(["a"], ["b"])
        stream = ray_batcher(engine.stream(), interval_ms=INTERVAL_MS).stream()
        pending = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.5)
        held = not pending.done()
        engine.more.set()
        assert await asyncio.wait_for(pending, 5) == ["a", "b"]  # one batch, at the end
        return held

    assert asyncio.run(scenario())


def test_errors_empty_streams_and_closing_early_behave_as_rays() -> None:
    async def failing() -> list[list[str]]:
        engine = Engine(["a"], ["b"], fail=RuntimeError("engine died"))
        engine.more.set()
        return [b async for b in first_chunk.FirstChunkBatcher(engine.stream(), interval_ms=INTERVAL_MS).stream()]

    with pytest.raises(RuntimeError, match="engine died"):
        asyncio.run(failing())

    async def empty() -> list[list[str]]:
        engine = Engine([], [])
        engine.more.set()
        return [b async for b in first_chunk.FirstChunkBatcher(engine.stream(), interval_ms=INTERVAL_MS).stream()]

    assert asyncio.run(empty()) == []

    async def closed_after_first() -> bool:
        engine = Engine(["a"], ["b"])
        batcher = first_chunk.FirstChunkBatcher(engine.stream(), interval_ms=INTERVAL_MS)
        stream = batcher.stream()
        assert await asyncio.wait_for(stream.__anext__(), 5) == ["a"]
        await stream.aclose()  # the client went away
        await asyncio.sleep(0)
        return batcher.read_task.cancelled() or batcher.read_task.done()

    assert asyncio.run(closed_after_first()), "the reader of the engine stream must stop with the client"


@pytest.mark.parametrize("interval_ms", [0, None])
def test_no_interval_is_rays_own(interval_ms: Any) -> None:
    async def scenario() -> list[list[str]]:
        engine = Engine(["a", "b"], ["c"])
        engine.more.set()
        return [b async for b in first_chunk.FirstChunkBatcher(engine.stream(), interval_ms=interval_ms).stream()]

    assert asyncio.run(scenario()) == ([["a"], ["b"], ["c"]] if interval_ms == 0 else [["a", "b", "c"]])


def test_the_private_ray_names_it_overrides_are_still_there() -> None:
    """Fails loudly when a Ray upgrade moves what first_chunk.py overrides:
    LLMServer._batch_output_stream builds the Batcher from
    _get_batch_interval_ms, and _run_request streams through it."""
    from ray.llm._internal.serve.utils.batcher import Batcher
    from ray.serve.llm import LLMServer

    build = inspect.getsource(LLMServer._batch_output_stream)
    assert "Batcher(" in build and "self._get_batch_interval_ms()" in build and ".stream()" in build, build
    assert "self._batch_output_stream(" in inspect.getsource(LLMServer._run_request)
    assert list(inspect.signature(Batcher.__init__).parameters) == ["self", "generator", "interval_ms"]
    for name in ("queue", "done_event", "read_task", "interval_s"):
        assert name in inspect.getsource(Batcher.__init__), name
    assert callable(Batcher.drain_queue) and callable(Batcher._merge_results)


def test_setting_reaches_ray_config_and_picks_the_server_class() -> None:
    on = llm_config.llm_config(parse_settings({"MODEL_ID": "m", "WATCHDOG_TIMEOUT": "0"}))
    assert on["experimental_configs"][first_chunk.FIRST_CHUNK_FLAG] is True
    assert on["server_cls"] == first_chunk.FIRST_CHUNK_SERVER_CLS
    off = llm_config.llm_config(parse_settings({"MODEL_ID": "m", "WATCHDOG_TIMEOUT": "0",
                                                "STREAM_FIRST_CHUNK_AT_ONCE": "0"}))
    # Still the project's class (Ray's batching then; src/no_telemetry.py's start).
    assert off["experimental_configs"][first_chunk.FIRST_CHUNK_FLAG] is False
    assert off["server_cls"] == first_chunk.FIRST_CHUNK_SERVER_CLS
    watched = llm_config.llm_config(parse_settings({"MODEL_ID": "m"}))
    assert watched["server_cls"] == llm_config.WATCHED_SERVER_CLS
    import engine_watchdog

    assert issubclass(engine_watchdog.WatchedLLMServer, first_chunk.FirstChunkLLMServer)
