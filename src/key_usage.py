"""Usage per API key, as Prometheus series of Ray's metrics port.

Nginx checks the key and sends its name (never the key) upstream as
``X-Ray-LLM-Key-Name`` (docker/nginx/templates/nginx.conf.template; a client's
own header of that name is replaced). This pure ASGI middleware, loaded into
Ray Serve's HTTP proxy with the other proxy middlewares
(proxy_middlewares.py), counts per key name:

    ray_llm_key_requests_total{key_name, status}      every /v1 answer
    ray_llm_key_prompt_tokens_total{key_name}         from the answer's usage
    ray_llm_key_completion_tokens_total{key_name}
    ray_llm_key_time_to_first_token_seconds{key_name} streams: request to first token event

Streamed completions report ``usage`` only when the client asks
(``stream_options.include_usage``). So for a stream that does not ask, the
request is sent on asking for it, and the usage-only event is taken out of
the stream before it reaches the client: the client gets what it asked for,
the counters get the tokens. Ray itself is imported only when the first
request is counted (in Ray's proxy process); ``Usage`` holds the parsing,
which the unit tests drive without Ray.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, MutableMapping, Protocol

from asgi_body import body_message, read_body, replay

KEY_HEADER = b"x-ray-llm-key-name"
API_PREFIX = "/v1/"
TOKEN_PATHS = ("/v1/completions", "/v1/chat/completions")
# Largest request body rewritten, and non-streamed answer read, for usage.
MAX_BODY = 16 * 1024 * 1024
TTFT_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Sink(Protocol):
    def record(self, usage: "Usage") -> None: ...


@dataclass
class Usage:
    """What one request used; filled from the request and its answer."""

    key_name: str
    started: float
    status: int = 0
    stream: bool = False
    hide_usage_event: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_s: float | None = None
    _pending: bytes = field(default=b"", repr=False)
    _body: bytes = field(default=b"", repr=False)

    def prepare_request(self, body: bytes) -> bytes:
        """Ask for usage on a stream that does not; the body to send on."""
        try:
            request = json.loads(body)
        except ValueError:
            return body
        if not isinstance(request, dict) or request.get("stream") is not True:
            return body
        self.stream = True
        options = request.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return body
        request["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        self.hide_usage_event = True
        return json.dumps(request).encode()

    def _take_usage(self, obj: Any) -> bool:
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if not isinstance(usage, dict):
            return False
        self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self.completion_tokens = int(usage.get("completion_tokens") or 0)
        return True

    def stream_chunk(self, chunk: bytes, now: float) -> bytes:
        """One piece of an SSE stream: usage read, the usage-only event dropped
        when the client did not ask for it; whole events out, a partial one kept."""
        data = self._pending + chunk
        events = data.split(b"\n\n")
        self._pending = events.pop()
        out = []
        for event in events:
            payload = event.removeprefix(b"data: ").strip()
            obj: Any = None
            if payload and payload != b"[DONE]":
                try:
                    obj = json.loads(payload)
                except ValueError:
                    obj = None
            if self.first_token_s is None and isinstance(obj, dict) and obj.get("choices"):
                self.first_token_s = now - self.started
            if self._take_usage(obj) and self.hide_usage_event and not (obj or {}).get("choices"):
                continue
            out.append(event + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest

    def body_chunk(self, chunk: bytes) -> None:
        if len(self._body) < MAX_BODY:
            self._body += chunk

    def finish_body(self) -> None:
        try:
            self._take_usage(json.loads(self._body))
        except ValueError:
            pass


class RayMetrics:
    """The four series, created on first use in the process that counts."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        self.requests = Counter("llm_key_requests", description="Answers under /v1 per API key name and status.",
                                tag_keys=("key_name", "status"))
        self.prompt = Counter("llm_key_prompt_tokens", description="Prompt tokens per API key name.",
                              tag_keys=("key_name",))
        self.completion = Counter("llm_key_completion_tokens", description="Completion tokens per API key name.",
                                  tag_keys=("key_name",))
        self.ttft = Histogram("llm_key_time_to_first_token_seconds",
                              description="Streams: time from the request to the first token event, per API key name.",
                              boundaries=TTFT_BOUNDARIES_S, tag_keys=("key_name",))

    def record(self, usage: Usage) -> None:
        tags = {"key_name": usage.key_name}
        self.requests.inc(tags={**tags, "status": str(usage.status)})
        if usage.prompt_tokens:
            self.prompt.inc(usage.prompt_tokens, tags=tags)
        if usage.completion_tokens:
            self.completion.inc(usage.completion_tokens, tags=tags)
        if usage.first_token_s is not None:
            self.ttft.observe(usage.first_token_s, tags=tags)


class KeyUsageMiddleware:
    def __init__(self, app: App, sink: Sink | None = None) -> None:
        self.app = app
        self.sink = sink

    def _sink(self) -> Sink:
        if self.sink is None:
            self.sink = RayMetrics()
        return self.sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or [])
        if scope.get("type") != "http" or not str(scope.get("path", "")).startswith(API_PREFIX) \
                or KEY_HEADER not in headers:
            await self.app(scope, receive, send)  # not through Nginx's key check (probes, direct calls)
            return
        usage = Usage(key_name=headers[KEY_HEADER].decode("latin-1"), started=time.monotonic())
        if scope.get("method") == "POST" and scope.get("path") in TOKEN_PATHS:
            receive, length = await self._prepared(receive, usage)
            if length is not None:  # the body was rewritten: its length too
                scope = dict(scope, headers=[(k, v) for k, v in scope.get("headers", [])
                                             if k.lower() != b"content-length"]
                             + [(b"content-length", str(length).encode())])

        async def counted_send(message: Message) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                usage.status = int(message.get("status", 0))
                if usage.hide_usage_event:  # the body changes length: chunked
                    message = dict(message, headers=[(k, v) for k, v in message.get("headers", [])
                                                     if k.lower() != b"content-length"])
            elif kind == "http.response.body":
                chunk = bytes(message.get("body", b""))
                more = message.get("more_body", False)
                if usage.stream and usage.status == 200:
                    chunk = usage.stream_chunk(chunk, time.monotonic())
                    if not more:
                        chunk += usage.flush()
                    message = dict(message, body=chunk)
                elif usage.status == 200:
                    usage.body_chunk(chunk)
                    if not more:
                        usage.finish_body()
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        finally:
            self._sink().record(usage)

    @staticmethod
    async def _prepared(receive: Receive, usage: Usage) -> tuple[Receive, int | None]:
        """Read the request body, let Usage rewrite it, and replay it; the new
        body's length when it changed."""
        messages, body, complete = await read_body(receive, MAX_BODY)
        new_body = usage.prepare_request(body) if complete else body
        if new_body is body:
            return replay(messages, receive), None
        return replay(body_message(new_body), receive), len(new_body)
