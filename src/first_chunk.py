"""The first chunk of a stream leaves the model replica at once.

Ray Serve LLM hands a replica's output to the ingress in batches, one every
``stream_batching_interval_ms`` (STREAM_BATCHING_INTERVAL_MS; Ray's default
is 50 ms, this project's 100): ``Batcher.stream``
(ray/llm/_internal/serve/utils/batcher.py) waits a whole interval before its
first yield, so the first token sits in the replica until the first tick.
Batching later tokens saves CPU per token; delaying the first one only adds
to time-to-first-token.

``FirstChunkBatcher`` yields whatever the engine has produced as soon as the
first item arrives, then batches the rest exactly as Ray does. A non-streamed
answer is one item, so it leaves at once too. ``FirstChunkLLMServer`` plugs it
in through ``LLMServer._batch_output_stream``, the one method that builds the
batcher; it applies when the model's LLMConfig carries
``experimental_configs[FIRST_CHUNK_FLAG]`` (STREAM_FIRST_CHUNK_AT_ONCE=1).
Both overridden names are private to Ray; tests/unit/test_first_chunk.py pins
them and fails when a Ray upgrade changes them.

Nothing here imports Ray at import time (llm_config.py imports the names).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncGenerator

from lazy_classes import lazy_attributes

# The key in LLMConfig.experimental_configs that turns it on (per model).
FIRST_CHUNK_FLAG = "stream_first_chunk_at_once"
# LLMConfig.server_cls when the watchdog is off (engine_watchdog's class
# derives from this one when it is on). Ray's batching when the flag is off.
FIRST_CHUNK_SERVER_CLS = "first_chunk:FirstChunkLLMServer"


def first_chunk_batcher_class() -> type:
    """Ray's Batcher with an immediate first yield (imports Ray Serve LLM)."""
    from ray.llm._internal.serve.utils.batcher import Batcher

    class FirstChunkBatcher(Batcher):  # type: ignore[misc, valid-type]
        async def _first_items(self) -> list[Any]:
            """Wait for the first item or the end of the stream (never
            cancelling the reader); the first item and any that came with it."""
            getter = asyncio.ensure_future(self.queue.get())
            ended = asyncio.ensure_future(self.done_event.wait())
            try:
                await asyncio.wait({getter, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                return [getter.result(), *self.drain_queue()]
            return []

        async def stream(self) -> AsyncGenerator[Any, None]:
            if not self.interval_s:  # 0: Ray yields each item at once; None: one batch at the end
                async for batch in super().stream():
                    yield batch
                return
            try:
                first = await self._first_items()
                if first:
                    yield self._merge_results(first)
                async for batch in super().stream():  # Ray's ticks for the rest
                    yield batch
            finally:
                if not self.read_task.done():
                    self.read_task.cancel()

    return FirstChunkBatcher


def first_chunk_server_class() -> type:
    """Ray's public LLMServer with FirstChunkBatcher when the model asks for it
    (through src/no_telemetry.py's subclass, which every model server uses)."""
    import no_telemetry

    LLMServer = no_telemetry.NoTelemetryLLMServer  # noqa: N806
    batcher = __getattr__("FirstChunkBatcher")

    class FirstChunkLLMServer(LLMServer):  # type: ignore[misc, valid-type]
        def _batch_output_stream(self, generator: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
            if not self._llm_config.experimental_configs.get(FIRST_CHUNK_FLAG):
                return super()._batch_output_stream(generator)
            return batcher(generator, interval_ms=self._get_batch_interval_ms()).stream()

    return FirstChunkLLMServer


# ``first_chunk:FirstChunkLLMServer`` as an import path (LLMConfig.server_cls);
# pickled by reference, so Ray's workers import it from src/.
__getattr__ = lazy_attributes(globals(), {"FirstChunkLLMServer": first_chunk_server_class,
                                          "FirstChunkBatcher": first_chunk_batcher_class})
