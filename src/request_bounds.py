"""Upper bounds on what one request may ask of a shared engine.

vLLM accepts ``n`` (and ``best_of``) up to 16384 and ``max_tokens`` up to the
context length, so one request can occupy a whole engine. This pure ASGI
middleware, loaded into Ray Serve's HTTP proxy with the other proxy
middlewares (proxy_middlewares.py), reads the JSON body of
POST /v1/completions and /v1/chat/completions and answers 400 in OpenAI's
shape, naming the parameter, when

    n or best_of          > REQUEST_MAX_N
    max_tokens or
    max_completion_tokens > REQUEST_MAX_TOKENS

(src/settings.py declares and validates both; deploy.py refuses bad values
before anything starts, and every Ray process inherits them). Anything else,
unparsable bodies included, passes on untouched with its body replayed: the
engine's own validation answers those. Nothing here imports Ray.
"""

from __future__ import annotations

import json
import os
from typing import Any, Awaitable, Callable, MutableMapping

from asgi_body import read_body, replay
from settings import DEFAULT_MAX_N, DEFAULT_MAX_TOKENS

MAX_N_VAR = "REQUEST_MAX_N"
MAX_TOKENS_VAR = "REQUEST_MAX_TOKENS"
BOUNDED_PATHS = ("/v1/completions", "/v1/chat/completions")
# (parameter, variable) pairs; the first one over its bound is reported.
CHECKS = (("n", MAX_N_VAR), ("best_of", MAX_N_VAR), ("max_tokens", MAX_TOKENS_VAR),
          ("max_completion_tokens", MAX_TOKENS_VAR))

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def bounds_from(environ: MutableMapping[str, str] | dict[str, str]) -> dict[str, int]:
    return {MAX_N_VAR: int(environ.get(MAX_N_VAR) or DEFAULT_MAX_N),
            MAX_TOKENS_VAR: int(environ.get(MAX_TOKENS_VAR) or DEFAULT_MAX_TOKENS)}


def violation(body: bytes, bounds: dict[str, int]) -> dict[str, Any] | None:
    """The OpenAI error object for the first parameter over its bound, else None."""
    try:
        request = json.loads(body)
    except ValueError:
        return None
    if not isinstance(request, dict):
        return None
    for param, variable in CHECKS:
        value = request.get(param)
        if isinstance(value, int) and not isinstance(value, bool) and value > bounds[variable]:
            return {"message": f"{param} may be at most {bounds[variable]} on this server, got {value}.",
                    "type": "invalid_request_error", "param": param, "code": "value_above_server_limit"}
    return None


class RequestBoundsMiddleware:
    def __init__(self, app: App) -> None:
        self.app = app
        self.bounds = bounds_from(dict(os.environ))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in BOUNDED_PATHS:
            await self.app(scope, receive, send)
            return
        messages, body, _complete = await read_body(receive)
        error = violation(body, self.bounds)
        if error is not None:
            payload = json.dumps({"error": error}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload, "more_body": False})
            return
        await self.app(scope, replay(messages, receive), send)
