"""Every error under /v1 in OpenAI's shape, without Ray's internals.

Ray Serve LLM answers errors in three shapes: FastAPI's ``{"detail": ...}``
(unknown model in a completion, wrong method, unknown path), its own error
object whose message chains "Message: ..., Internal exception: <module
path>, original exception: ..." and whose type is a Python class name, and
the HTTP proxy's plain text (no app deployed yet, backpressure, timeouts).
This module turns each of them into the object OpenAI documents:

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

keeping the useful part of the message ("max_tokens must be at least 1, got
0.") and the status, except for one: the proxy's "Path not found" before the
app is deployed becomes 503 (the model is not ready yet), like Nginx's
/readyz.

``OpenAIErrorMiddleware`` is a pure ASGI middleware. Ray's HTTP proxy loads
it through ``proxy_middlewares.proxy_middlewares``
(RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH, set by deploy.py and
ray-node.sh), so it sees every answer the proxy sends,
from the ingress and from the proxy itself. Successful answers pass through
untouched (one status check per response; stream chunks are only searched
for an error event). Nothing here imports Ray.
"""

from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable, MutableMapping

# Only the OpenAI API is rewritten; Serve's own /-/ routes stay as they are.
API_PREFIX = "/v1"
# Largest error body read for rewriting; a longer one is cut (errors are small).
MAX_ERROR_BODY = 64 * 1024
# The error body again, as a response header Nginx reads: Nginx intercepts
# every 404/5xx under /v1 (HAProxy answers those in text/plain while the app
# starts or recovers) and answers with this header's JSON when it is there,
# else with its own OpenAI-shaped error. Nginx never passes the header on.
ERROR_HEADER = b"x-ray-llm-error"
# Longest body copied into the header (Nginx's proxy_buffer_size is 16k).
MAX_ERROR_HEADER = 8 * 1024

# Default type and code per status (OpenAI: type is a category, code a
# machine-readable reason or null). Nginx's error pages use the same codes.
STATUS_DEFAULTS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "bad_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    422: ("invalid_request_error", "invalid_value"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "upstream_unavailable"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "upstream_timeout"),
}
GENERIC_MESSAGES: dict[int, str] = {
    404: "Not found.",
    405: "Method not allowed.",
    500: "Internal error in the model server.",
    503: "The model server is unavailable; retry shortly.",
}
NOT_READY_MESSAGE = ("The model is not ready: the API is not deployed yet or is restarting "
                     "(loading, or recovering after a hang or crash). Retry shortly.")
# OpenAI's own codes for cases that can be recognised in the message.
KNOWN_CODES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"could not find (base )?model|unable to find .*model|model .* does not exist", re.I),
     "model_not_found"),
    (re.compile(r"maximum context length|max_model_len", re.I), "context_length_exceeded"),
    (re.compile(r"field required", re.I), "missing_required_parameter"),
)

# Ray's chained message: "Message: <useful>, Internal exception: <path> (...), original exception: <str>".
RAY_CHAIN = re.compile(r"^Message: (?P<message>.*?), Internal exception: .*$", re.S)
REQUEST_ID = re.compile(r"\s*\(Request ID: [^)]*\)")
# vLLM's "(parameter=max_tokens, value=0)" suffix, folded into the message by Ray.
PARAMETER = re.compile(r"\s*\(parameter=(?P<param>[\w.\[\]]+), value=[^)]*\)")
# Ray's validation message: "Invalid request format: <msg> at ('body', 'messages')".
VALIDATION = re.compile(r"^Invalid request format: (?P<message>.+?) at \((?P<loc>.*)\)$", re.S)
PROXY_NOT_FOUND = re.compile(r"^Path '.*' not found\. Ping http://.*/-/routes", re.S)
# What must never reach a client: module paths, exception chains, tracebacks.
INTERNALS = re.compile(
    r"Traceback|Internal exception|original exception|File \"|\bray\.|\bvllm\.|_internal|"
    r"\b[a-z_]+(\.[a-z_]+){2,}\b", re.S)
OPENAI_WORD = re.compile(r"^[a-z][a-z0-9_]*$")


def _extract(content_type: str, body: bytes) -> tuple[str, Any, Any, Any]:
    """message, type, param, code as found in any of the upstream shapes."""
    text = body.decode("utf-8", "replace").strip()
    if "json" in content_type or text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict):
                return str(error.get("message") or ""), error.get("type"), error.get("param"), error.get("code")
            if isinstance(error, str):
                return error, data.get("type"), data.get("param"), data.get("code")
            if "message" in data:  # vLLM's older flat ErrorResponse
                return str(data["message"]), data.get("type"), data.get("param"), data.get("code")
            detail = data.get("detail")
            if isinstance(detail, str):
                return detail, None, None, None
            if isinstance(detail, list) and detail and isinstance(detail[0], dict):
                first = detail[0]
                loc = [str(p) for p in first.get("loc", ()) if p != "body"]
                return str(first.get("msg") or "Invalid request."), None, ".".join(loc) or None, None
    return text, None, None, None


def _param_from_loc(loc: str) -> str | None:
    parts = [p.strip().strip("'\"") for p in loc.split(",")]
    parts = [p for p in parts if p and p != "body"]
    return ".".join(parts) or None


def error_object(status: int, content_type: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """(status, {"error": {...}}) in OpenAI's shape for an upstream error answer."""
    message, err_type, param, code = _extract(content_type, body)
    if status == 404 and PROXY_NOT_FOUND.match(message):
        return 503, {"error": {"message": NOT_READY_MESSAGE, "type": "server_error", "param": None,
                               "code": "model_not_ready"}}
    chain = RAY_CHAIN.match(message)
    if chain:
        message = chain.group("message")
    message = REQUEST_ID.sub("", message)
    found = PARAMETER.search(message)
    if found:
        param = param if isinstance(param, str) else found.group("param")
        message = PARAMETER.sub("", message)
    validation = VALIDATION.match(message)
    if validation:
        message = validation.group("message")
        param = _param_from_loc(validation.group("loc"))
        if param:
            message = f"{param}: {message}"
    message = message.strip()
    if not isinstance(param, str):
        param = None
    if INTERNALS.search(message) or not message:
        message = GENERIC_MESSAGES.get(status) or ("Invalid request." if status < 500 else "Server error.")
    default_type, default_code = STATUS_DEFAULTS.get(
        status, ("invalid_request_error" if status < 500 else "server_error", f"http_{status}"))
    if not (isinstance(err_type, str) and OPENAI_WORD.match(err_type) and err_type.endswith("_error")):
        err_type = default_type
    known = next((known for pattern, known in KNOWN_CODES if pattern.search(message)), None) if status < 500 else None
    if known:
        code = known
    elif not (isinstance(code, str) and OPENAI_WORD.match(code)):
        code = "invalid_value" if param and status == 400 else default_code
    return status, {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def clean_stream_chunk(chunk: bytes, status: int = 500) -> bytes:
    """Rewrite `data: {"error": ...}` events of an event stream; others stay byte for byte."""
    if b'"error"' not in chunk:
        return chunk
    out: list[bytes] = []
    for line in chunk.split(b"\n"):
        if line.startswith(b"data: {") and b'"error"' in line:
            try:
                data = json.loads(line[6:])
            except ValueError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                code = data["error"].get("code")
                event_status = code if isinstance(code, int) and 400 <= code < 600 else status
                _, obj = error_object(event_status, "application/json", line[6:])
                line = b"data: " + json.dumps(obj, separators=(",", ":")).encode()
        out.append(line)
    return b"\n".join(out)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class OpenAIErrorMiddleware:
    """ASGI middleware: error answers under /v1 leave in OpenAI's shape."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not str(scope.get("path", "")).startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = {"mode": None, "start": None, "body": b""}

        async def wrapped_send(message: Message) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                content_type = headers.get(b"content-type", b"").decode("latin-1")
                status = int(message.get("status", 200))
                if status >= 400:
                    state.update(mode="error", start=message, content_type=content_type, status=status)
                    return
                state["mode"] = "stream" if content_type.startswith("text/event-stream") else "pass"
                await send(message)
                return
            if kind == "http.response.body" and state["mode"] == "error":
                if len(state["body"]) < MAX_ERROR_BODY:
                    state["body"] += bytes(message.get("body", b""))[:MAX_ERROR_BODY]
                if message.get("more_body", False):
                    return
                await self._send_error(send, state)
                return
            if kind == "http.response.body" and state["mode"] == "stream" and message.get("body"):
                message = dict(message, body=clean_stream_chunk(bytes(message["body"])))
            await send(message)

        await self.app(scope, receive, wrapped_send)

    @staticmethod
    async def _send_error(send: Send, state: dict[str, Any]) -> None:
        status, obj = error_object(state["status"], state["content_type"], state["body"])
        body = json.dumps(obj, separators=(",", ":")).encode()
        keep = [(k, v) for k, v in state["start"].get("headers", [])
                if k.lower() not in (b"content-type", b"content-length")]
        headers = keep + [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if len(body) <= MAX_ERROR_HEADER:  # json.dumps: ASCII, one line
            headers.append((ERROR_HEADER, body))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
