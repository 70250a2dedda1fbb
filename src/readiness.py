"""Readiness of every served model, answered where Ray Serve takes HTTP.

The readiness probe (Nginx's /readyz and the container healthcheck) is a
1-token completion without ``model``: Ray Serve's /v1/models answers from
configuration while an engine is still loading, and only a generation shows
that a model really answers. With one model, Ray routes a completion without
``model`` to it. With several (MODELS_FILE) it answers 400, so the probe
carries a header, ``X-Ray-LLM-Ready: all``, and this middleware answers it
instead of Ray's ingress:

* it lists the served models (GET /v1/models, through the app it wraps;
  the LoRA adapters listed there as MODEL:ADAPTER are not probed),
* sends each one a 1-token completion at once (through that app, as a
  client's request would go); a model that refuses completions with a 4xx
  (an embedding model) is asked for an embedding instead,
* answers 200 ``{"status": "ready", "models": {name: "ready", ...}}`` only
  when every model answered, else 503 in OpenAI's error shape naming the
  models that did not (code ``model_not_ready``).

Probes that arrive while a check runs share its answer. The inner requests
are ASGI calls into the wrapped app, not network connections, so nothing
depends on an address. Ray loads this middleware into Serve's HTTP proxy, or,
with its HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1, the default), into the
ingress replica that then serves HTTP itself; each ends a request cut at the
bound its own way, and both count as no answer. Direct streaming serves
exactly one model; the same probe then reaches that model as an ordinary
completion.
Nginx strips the header from client requests. Nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable, MutableMapping

from openai_errors import error_object

READY_HEADER = b"x-ray-llm-ready"
PROBE_PATH = "/v1/completions"
# Bound of one model's 1-token completion: below the healthcheck's own 20 s,
# so it still hears which model did not answer (Nginx gives up after 5 s).
MODEL_TIMEOUT_S = 15.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_probe(scope: Scope) -> bool:
    if scope.get("type") != "http" or scope.get("path") != PROBE_PATH or scope.get("method") != "POST":
        return False
    return any(k.lower() == READY_HEADER and v.strip().lower() == b"all" for k, v in scope.get("headers", []))


async def call(app: App, scope: Scope, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request through the wrapped app: (status, body); (504, b"") when it took too long."""
    # Ray gives each inner request an id of its own (x-request-id dropped).
    headers = [(k, v) for k, v in scope.get("headers", [])
               if k.lower() not in (READY_HEADER, b"content-length", b"content-type", b"transfer-encoding",
                                    b"x-request-id")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    inner = dict(scope, method=method, path=path, raw_path=path.encode(), query_string=b"", headers=headers)
    finished = asyncio.Event()
    delivered = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        # The client stays connected until the answer is complete.
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message.get("type") == "http.response.start":
            status = int(message.get("status", 500))
        elif message.get("type") == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    task = asyncio.ensure_future(app(inner, receive, send))
    try:
        done, _ = await asyncio.wait({task}, timeout=MODEL_TIMEOUT_S)
        if not done:
            # Cut at the bound, the app ends its own way: Ray's proxy returns
            # without an answer, the ingress replica behind HAProxy (direct
            # ingress) raises from its middleware. Either is "no answer".
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return 504, b""
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        finished.set()
    if task.cancelled() or task.exception() is not None or status == 0:
        # Failed (or was cancelled inside the app) before the bound.
        return 500, b"".join(chunks)
    return status, b"".join(chunks)


def reason(status: int, body: bytes) -> str:
    """Why one answer is not a completion, in a few words (never Ray's internals)."""
    if status == 504 and not body:
        return f"no answer within {MODEL_TIMEOUT_S:.0f}s"
    if status >= 400:
        _, obj = error_object(status, "application/json", body)
        return f"HTTP {status}: {obj['error']['message']}"
    return f"HTTP {status} without a completion"


def answered(status: int, body: bytes, key: str = "choices") -> bool:
    if status != 200:
        return False
    try:
        return bool(json.loads(body).get(key))
    except (ValueError, AttributeError):
        return False


class ReadinessMiddleware:
    """ASGI middleware: the ready probe fans out to every served model."""

    def __init__(self, app: App) -> None:
        self.app = app
        # One check at a time: probes that arrive while one runs share its
        # answer, so frequent probes never pile requests onto a loading model.
        self._running: asyncio.Task[tuple[int, dict[str, Any]]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_probe(scope):
            await self.app(scope, receive, send)
            return
        message: Message = {"more_body": True}
        while message.get("more_body"):  # the probe's own body is not needed
            message = await receive()
            if message.get("type") != "http.request":
                return
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self.checked(scope))
        status, obj = await asyncio.shield(self._running)
        body = json.dumps(obj, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def checked(self, scope: Scope) -> tuple[int, dict[str, Any]]:
        """The check, whose own failure is an answer too: 503, never a bare 500."""
        try:
            return await self.readiness(scope)
        except Exception as err:  # noqa: BLE001 - the probe must always get its JSON
            return not_ready(f"the readiness check failed ({err.__class__.__name__})")

    async def readiness(self, scope: Scope) -> tuple[int, dict[str, Any]]:
        status, body = await call(self.app, scope, "GET", "/v1/models")
        names: list[str] = []
        if status == 200:
            try:
                names = [str(m["id"]) for m in json.loads(body)["data"]]
            except (ValueError, KeyError, TypeError):
                names = []
        if not names:
            return not_ready(f"the model list is not available ({reason(status, body)})")
        names = served_models(names)
        answers = await asyncio.gather(*(self.model_answer(scope, name) for name in names))
        missing = {name: why for name, why in zip(names, answers) if why}
        if missing:
            return not_ready("; ".join(f"model {name!r}: {why}" for name, why in missing.items()))
        return 200, {"status": "ready", "models": {name: "ready" for name in names}}

    async def model_answer(self, scope: Scope, name: str) -> str | None:
        """None when the model answered, else why not. A model that refuses a
        completion (4xx: an embedding model) is asked for an embedding."""
        status, body = await call(self.app, scope, "POST", PROBE_PATH,
                                  json.dumps({"model": name, "prompt": "ping", "max_tokens": 1}).encode())
        if answered(status, body):
            return None
        if 400 <= status < 500 and status != 429:
            e_status, e_body = await call(self.app, scope, "POST", "/v1/embeddings",
                                          json.dumps({"model": name, "input": "ping"}).encode())
            if answered(e_status, e_body, "data"):
                return None
        return reason(status, body)


def served_models(listed: list[str]) -> list[str]:
    """The served models of /v1/models, without the LoRA adapters Ray lists
    beside each (MODEL:ADAPTER, read from the store): probing those would
    fetch every adapter of the store at each check."""
    bases = set(listed)
    return [name for name in listed if not (":" in name and name.split(":", 1)[0] in bases)]


def not_ready(why: str) -> tuple[int, dict[str, Any]]:
    return 503, {"error": {"message": f"Not ready: {why.rstrip('.')}.", "type": "server_error", "param": None,
                           "code": "model_not_ready"}}
