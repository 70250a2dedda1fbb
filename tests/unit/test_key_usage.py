"""src/key_usage.py without Ray: the per-key counting of a real ASGI app's
answers (streamed and not), with a recording sink in place of Ray's metrics.
The Compose monitoring test checks the series in Prometheus against the
usage the same requests returned."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from key_usage import KeyUsageMiddleware, Usage

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Usage] = []

    def record(self, usage: Usage) -> None:
        self.seen.append(usage)


def make_app(received: list[dict[str, Any]]) -> FastAPI:
    """An OpenAI-like app: usage in a last, choice-less event only when asked (as vLLM)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        received.append({"body": body, "content-length": request.headers.get("content-length")})
        if not body.get("stream"):
            return JSONResponse({"object": "chat.completion", "choices": [{"index": 0}], "usage": USAGE})

        async def events() -> Any:
            for token in ("a", "b", "c"):
                yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": token}}]}) + "\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield "data: " + json.dumps({"choices": [], "usage": USAGE}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models() -> Any:
        return JSONResponse({"error": {"message": "no", "type": "x", "param": None, "code": "y"}}, status_code=503)

    return app


def run(requests: list[tuple[str, str, dict[str, str], dict | None]]) -> tuple[list[httpx.Response], Recorder,
                                                                                  list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []
    recorder = Recorder()
    middleware = KeyUsageMiddleware(make_app(received), sink=recorder)

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [await client.request(method, path, headers=headers, json=body)
                    for method, path, headers, body in requests]

    return asyncio.run(go()), recorder, received


TEAM = {"x-ray-llm-key-name": "team_a"}


def test_a_stream_that_did_not_ask_for_usage_is_counted_and_gets_none() -> None:
    body = {"model": "m", "stream": True, "messages": []}
    (answer,), recorder, received = run([("POST", "/v1/chat/completions", TEAM, body)])
    assert received[0]["body"]["stream_options"] == {"include_usage": True}
    assert received[0]["content-length"] == str(len(json.dumps(received[0]["body"]).encode()))
    events = [line for line in answer.text.split("\n\n") if line]
    assert len(events) == 4 and events[-1] == "data: [DONE]" and "usage" not in answer.text
    (usage,) = recorder.seen
    assert (usage.key_name, usage.status, usage.prompt_tokens, usage.completion_tokens) == ("team_a", 200, 7, 3)
    assert usage.first_token_s is not None and usage.first_token_s >= 0


def test_a_stream_that_asked_for_usage_keeps_it() -> None:
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "messages": []}
    (answer,), recorder, received = run([("POST", "/v1/chat/completions", TEAM, body)])
    assert received[0]["body"] == body
    assert '"usage"' in answer.text
    assert recorder.seen[0].completion_tokens == 3


def test_plain_answers_errors_and_unkeyed_requests() -> None:
    answers, recorder, _ = run([
        ("POST", "/v1/chat/completions", TEAM, {"model": "m", "messages": []}),
        ("GET", "/v1/models", {"x-ray-llm-key-name": "team_b"}, None),
        ("POST", "/v1/chat/completions", {}, {"model": "m", "messages": []}),  # no key name: not counted
    ])
    assert [a.status_code for a in answers] == [200, 503, 200]
    assert answers[0].json()["usage"] == USAGE
    assert [(u.key_name, u.status, u.prompt_tokens, u.completion_tokens, u.first_token_s) for u in recorder.seen] \
        == [("team_a", 200, 7, 3, None), ("team_b", 503, 0, 0, None)]


def test_events_split_across_chunks_are_joined() -> None:
    usage = Usage("k", started=0.0, stream=True, hide_usage_event=True)
    event = b'data: {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 5}}\n\n'
    token = b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n'
    out = usage.stream_chunk(token + event[:20], 1.0) + usage.stream_chunk(event[20:] + b"data: [DONE]\n\n", 2.0)
    assert out == token + b"data: [DONE]\n\n" and usage.flush() == b""
    assert (usage.prompt_tokens, usage.completion_tokens, usage.first_token_s) == (2, 5, 1.0)
