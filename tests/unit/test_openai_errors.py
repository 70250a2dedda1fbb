"""src/openai_errors.py: the upstream error shapes seen from Ray Serve LLM 2.60
(bodies captured from the running stack) come out in OpenAI's shape, and the
middleware does it on a real FastAPI/Starlette app, as in Ray's proxy.

The stack-level proof (the official client's typed exceptions through Nginx)
is tests/integration/local/test_conformance.py.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.responses import PlainTextResponse, StreamingResponse

from support import assert_openai_error_body
from openai_errors import OpenAIErrorMiddleware, clean_stream_chunk, error_object

RAY_CHAIN_400 = (
    '{"error":{"message":"Message: max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0) '
    '(Request ID: e89983358e88d63a6fbe8f4756ac943d), Internal exception: '
    'ray.llm._internal.serve.core.configs.openai_api_models.OpenAIHTTPException '
    '(Request ID: e89983358e88d63a6fbe8f4756ac943d), original exception: ","type":"OpenAIHTTPException",'
    '"param":null,"code":400}}')
RAY_MODEL_DATA_404 = (
    '{"error":{"message":"Message: Unable to find nope. Please ensure that the model exists and you have '
    'permission. (Request ID: 6057f9), Internal exception: ray.llm._internal.serve.core.configs.'
    'openai_api_models.OpenAIHTTPException (Request ID: 6057f9), original exception: ",'
    '"type":"OpenAIHTTPException","param":null,"code":404}}')
FASTAPI_MODEL_404 = '{"detail":"Got request for model \\"nope\\". Could not find base model with ID \\"nope\\"."}'
RAY_VALIDATION_400 = ('{"error":{"message":"Invalid request format: Field required at (\'body\', \'messages\')",'
                      '"type":"missing","param":{"model":"tiny-llama"},"code":"invalid_parameter"}}')
PROXY_404 = "Path '/v1/models' not found. Ping http://.../-/routes for available routes."


def shape(obj: dict) -> dict:
    error = assert_openai_error_body(obj)
    assert isinstance(error["type"], str) and isinstance(error["code"], (str, type(None))), error
    return error


def test_ray_chained_message_keeps_the_useful_part_and_the_param() -> None:
    status, obj = error_object(400, "application/json", RAY_CHAIN_400.encode())
    error = shape(obj)
    assert status == 400
    assert error == {"message": "max_tokens must be at least 1, got 0.", "type": "invalid_request_error",
                     "param": "max_tokens", "code": "invalid_value"}


@pytest.mark.parametrize("body", [RAY_MODEL_DATA_404, FASTAPI_MODEL_404])
def test_unknown_model_is_404_model_not_found(body: str) -> None:
    status, obj = error_object(404, "application/json", body.encode())
    error = shape(obj)
    assert (status, error["code"], error["type"]) == (404, "model_not_found", "invalid_request_error")
    assert "nope" in error["message"]


def test_fastapi_detail_and_validation_shapes() -> None:
    status, obj = error_object(405, "application/json", b'{"detail":"Method Not Allowed"}')
    assert (status, shape(obj)["code"]) == (405, "method_not_allowed")
    status, obj = error_object(404, "application/json", b'{"detail":"Not Found"}')
    assert (status, shape(obj)["code"]) == (404, "not_found")
    status, obj = error_object(400, "application/json", RAY_VALIDATION_400.encode())
    error = shape(obj)
    assert (error["param"], error["code"], error["type"]) == ("messages", "missing_required_parameter",
                                                              "invalid_request_error")
    assert error["message"] == "messages: Field required"


def test_proxy_texts() -> None:
    status, obj = error_object(404, "text/plain; charset=utf-8", PROXY_404.encode())
    assert (status, shape(obj)["code"]) == (503, "model_not_ready")
    status, obj = error_object(503, "text/plain; charset=utf-8", b"Request dropped due to backpressure.")
    assert (status, shape(obj)["type"]) == (503, "server_error")
    status, obj = error_object(500, "text/plain", b"Internal Server Error")
    assert (status, shape(obj)["code"]) == (500, "internal_error")


def test_internals_never_survive() -> None:
    body = json.dumps({"error": {"message": "Traceback (most recent call last): File \"x.py\"", "type": "X",
                                 "code": 500}})
    status, obj = error_object(500, "application/json", body.encode())
    assert shape(obj)["message"] == "Internal error in the model server."


def test_stream_error_events_are_rewritten_and_others_kept() -> None:
    ok = b'data: {"id":"1","choices":[]}\n\n'
    assert clean_stream_chunk(ok) is ok
    chunk = ok + b"data: " + RAY_CHAIN_400.encode() + b"\n\ndata: [DONE]\n\n"
    out = clean_stream_chunk(chunk)
    events = [line[6:] for line in out.split(b"\n") if line.startswith(b"data: {")]
    assert events[0] == ok.strip()[6:]
    assert shape(json.loads(events[1]))["param"] == "max_tokens"
    assert out.endswith(b"data: [DONE]\n\n")


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models/{model}")
    async def model(model: str) -> dict:
        raise HTTPException(404, f'Got request for model "{model}". Could not find base model with ID "{model}".')

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        async def events():
            yield 'data: {"id":"1"}\n\n'
            yield "data: " + RAY_CHAIN_400 + "\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/plain")
    async def plain() -> PlainTextResponse:
        return PlainTextResponse(PROXY_404, status_code=404)

    @app.get("/-/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("not ok", status_code=503)

    return app


def test_middleware_on_a_real_asgi_app() -> None:
    async def go() -> None:
        transport = httpx.ASGITransport(app=OpenAIErrorMiddleware(make_app()))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/v1/models/nope", headers={"x-request-id": "abc"})
            assert r.status_code == 404 and r.headers["content-type"] == "application/json"
            assert int(r.headers["content-length"]) == len(r.content)
            assert shape(r.json())["code"] == "model_not_found"
            # The same JSON for Nginx, which intercepts every upstream 404/5xx.
            assert r.headers["x-ray-llm-error"] == r.text
            r = await client.put("/v1/chat/completions")
            assert r.status_code == 405 and shape(r.json())["code"] == "method_not_allowed"
            r = await client.get("/v1/plain")
            assert r.status_code == 503 and shape(r.json())["code"] == "model_not_ready"
            r = await client.post("/v1/chat/completions")
            assert r.status_code == 200 and r.text.startswith('data: {"id":"1"}')
            assert "Internal exception" not in r.text and '"param":"max_tokens"' in r.text
            # Serve's own routes are not the API: left alone.
            r = await client.get("/-/healthz")
            assert (r.status_code, r.text) == (503, "not ok")

    asyncio.run(go())


# --- Request bounds (REQUEST_MAX_N, REQUEST_MAX_TOKENS) ------------------------------

def run_bounds(path: str, body: bytes, **environ: str) -> tuple[list[dict], bytes | None]:
    """RequestBoundsMiddleware around an app that echoes the body it received."""
    import asyncio
    import os
    from unittest import mock

    from request_bounds import RequestBoundsMiddleware

    received: list[bytes] = []

    async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        chunks = b""
        while True:
            message = await receive()
            chunks += message.get("body", b"")
            if not message.get("more_body"):
                break
        received.append(chunks)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict] = []
    parts = [body[:5], body[5:]]
    messages = iter([{"type": "http.request", "body": parts[0], "more_body": True},
                     {"type": "http.request", "body": parts[1], "more_body": False}])

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    with mock.patch.dict(os.environ, environ):
        middleware = RequestBoundsMiddleware(app)
    asyncio.run(middleware({"type": "http", "method": "POST", "path": path}, receive, send))
    return sent, received[0] if received else None


@pytest.mark.parametrize(("field", "value", "variable"), [
    ("n", 9, "REQUEST_MAX_N"), ("best_of", 9, "REQUEST_MAX_N"),
    ("max_tokens", 4097, "REQUEST_MAX_TOKENS"), ("max_completion_tokens", 4097, "REQUEST_MAX_TOKENS"),
])
def test_requests_above_the_bounds_get_400_naming_the_parameter(field: str, value: int, variable: str) -> None:
    sent, forwarded = run_bounds("/v1/chat/completions", json.dumps({"model": "m", field: value}).encode(),
                                 REQUEST_MAX_N="8", REQUEST_MAX_TOKENS="4096")
    assert forwarded is None and sent[0]["status"] == 400
    error = json.loads(sent[1]["body"])["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error" and str(value) in error["message"]


def test_requests_within_the_bounds_pass_with_their_body() -> None:
    body = json.dumps({"model": "m", "n": 8, "max_tokens": 4096, "prompt": "x" * 100}).encode()
    sent, forwarded = run_bounds("/v1/completions", body, REQUEST_MAX_N="8", REQUEST_MAX_TOKENS="4096")
    assert forwarded == body and sent[0]["status"] == 200
    # Not JSON: left to the engine's own validation, body intact.
    sent, forwarded = run_bounds("/v1/completions", b"not json at all", REQUEST_MAX_N="8")
    assert forwarded == b"not json at all"
    # Other paths are not read.
    sent, forwarded = run_bounds("/v1/embeddings", json.dumps({"n": 100}).encode(), REQUEST_MAX_N="8")
    assert forwarded is not None


def test_proxy_middlewares_nest_as_ray_applies_them() -> None:
    """Wrapped by Ray's own _apply_middlewares (private: this fails loudly if a
    Ray upgrade changes the order): a bound's 400 leaves in OpenAI's shape with
    the header Nginx reads, and is counted for its key."""
    from ray.serve._private.http_util import _apply_middlewares

    import key_usage
    from proxy_middlewares import proxy_middlewares

    counted: list[tuple[str, int]] = []

    class Sink:
        def record(self, usage: key_usage.Usage) -> None:
            counted.append((usage.key_name, usage.status))

    async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    original = key_usage.KeyUsageMiddleware.__init__

    def with_sink(self, inner, sink=None):  # type: ignore[no-untyped-def]
        original(self, inner, Sink())

    key_usage.KeyUsageMiddleware.__init__ = with_sink  # type: ignore[method-assign]
    try:
        wrapped = _apply_middlewares(app, proxy_middlewares())

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=wrapped)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.post("/v1/completions", json={"model": "m", "prompt": "x", "n": 100000},
                                         headers={"x-ray-llm-key-name": "team_a"})

        r = asyncio.run(go())
    finally:
        key_usage.KeyUsageMiddleware.__init__ = original  # type: ignore[method-assign]
    assert r.status_code == 400 and shape(r.json())["param"] == "n", r.text
    assert r.headers["x-ray-llm-error"] == r.text
    assert counted == [("team_a", 400)]
