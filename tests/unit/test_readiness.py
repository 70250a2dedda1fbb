"""src/readiness.py's decisions, in process. The wrapped app is a stand-in for
Ray Serve's HTTP proxy (an ASGI app answering like it), for the cases the
tiny CPU stack cannot show: an embedding model, a broken model list, many
probes at once. The real proxy is tested in tests/integration/compose/test_compose_stack.py (two models in Compose)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import readiness
from readiness import ReadinessMiddleware


class StandInProxy:
    """Answers /v1/models, /v1/completions and /v1/embeddings per model."""

    def __init__(self, models: dict[str, str], listing: int = 200, delay: float = 0.0) -> None:
        # name -> "chat" | "embed" | "down" | "frozen" | "frozen-raises". A
        # frozen model never answers; cut at the bound it returns without an
        # answer (Serve's proxy) or raises from its middleware (the ingress
        # replica behind Ray's HAProxy: Starlette's "No response returned.").
        self.models = models
        self.listing = listing
        self.delay = delay
        self.calls: list[tuple[str, str | None]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        if scope["method"] == "POST":
            body = (await receive())["body"]
        model = json.loads(body).get("model") if body else None
        self.calls.append((scope["path"], model))
        if scope["path"] != "/v1/models" and self.models[str(model)].startswith("frozen"):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if self.models[str(model)] == "frozen-raises":
                    raise RuntimeError("No response returned.") from None
                return
        await asyncio.sleep(self.delay)
        status, answer = self.answer(scope["path"], model)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})

    def answer(self, path: str, model: str | None) -> tuple[int, dict[str, Any]]:
        if path == "/v1/models":
            return self.listing, {"data": [{"id": name} for name in self.models]}
        kind = self.models[str(model)]
        if kind == "down":
            return 503, {"error": {"message": "The model server is unavailable; retry shortly."}}
        if path == "/v1/completions":
            return (200, {"choices": [{"text": "x"}]}) if kind == "chat" else (400, {"detail": "not a generator"})
        return (200, {"data": [{"embedding": [0.1]}]}) if kind == "embed" else (404, {"detail": "Not Found"})


def probe(app: ReadinessMiddleware, count: int = 1) -> list[tuple[int, dict[str, Any]]]:
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [(b"x-ray-llm-ready", b"all")]}

    async def one() -> tuple[int, dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(dict(scope), receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    async def all_of() -> list[tuple[int, dict[str, Any]]]:
        return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(all_of())


def test_an_embedding_model_is_ready_when_it_embeds() -> None:
    proxy = StandInProxy({"chat": "chat", "embed": "embed"})
    [(status, body)] = probe(ReadinessMiddleware(proxy))
    assert (status, body) == (200, {"status": "ready", "models": {"chat": "ready", "embed": "ready"}})
    assert ("/v1/embeddings", "chat") not in proxy.calls and ("/v1/embeddings", "embed") in proxy.calls


def test_lora_adapters_listed_beside_their_model_are_not_probed() -> None:
    """Ray lists each adapter of LORA_ADAPTERS_PATH's store as MODEL:ADAPTER;
    a probe of each would fetch the whole store at every check (seen on the
    CPU stack: the first /readyz downloaded the adapter)."""
    proxy = StandInProxy({"chat": "chat", "chat:sql": "down", "chat:support": "down", "other:x": "chat"})
    [(status, body)] = probe(ReadinessMiddleware(proxy))
    assert (status, body) == (200, {"status": "ready", "models": {"chat": "ready", "other:x": "ready"}})
    assert [model for path, model in proxy.calls if path != "/v1/models"] == ["chat", "other:x"]


def test_a_model_that_is_down_is_named_and_the_others_are_not() -> None:
    [(status, body)] = probe(ReadinessMiddleware(StandInProxy({"chat": "chat", "big": "down"})))
    assert status == 503 and body["error"]["code"] == "model_not_ready"
    assert body["error"]["message"] == "Not ready: model 'big': HTTP 503: The model server is unavailable; retry shortly."


def test_no_model_list_is_not_ready() -> None:
    [(status, body)] = probe(ReadinessMiddleware(StandInProxy({"chat": "chat"}, listing=503)))
    assert status == 503 and body["error"]["message"].startswith("Not ready: the model list is not available")


def test_probes_at_once_share_one_check() -> None:
    proxy = StandInProxy({"a": "chat", "b": "chat"}, delay=0.2)
    answers = probe(ReadinessMiddleware(proxy), count=5)
    assert all(status == 200 for status, _ in answers)
    assert proxy.calls.count(("/v1/models", None)) == 1 and len(proxy.calls) == 3


@pytest.mark.parametrize("kind", ["frozen", "frozen-raises"], ids=["serve-proxy-returns", "direct-ingress-raises"])
def test_a_model_that_never_answers_is_named_at_the_bound(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setattr(readiness, "MODEL_TIMEOUT_S", 0.3)
    [(status, body)] = probe(ReadinessMiddleware(StandInProxy({"chat": "chat", "frozen": kind})))
    assert status == 503 and body["error"]["code"] == "model_not_ready", body
    assert body["error"]["message"].startswith("Not ready: model 'frozen': no answer within ")
    assert "'chat'" not in body["error"]["message"]


def test_a_check_that_fails_still_answers_in_json() -> None:
    class Broken(StandInProxy):
        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            raise RuntimeError("boom")

    [(status, body)] = probe(ReadinessMiddleware(Broken({})))
    assert status == 503 and body["error"]["code"] == "model_not_ready"
    assert body["error"]["message"].startswith("Not ready: the model list is not available (HTTP 500")


def test_other_requests_pass_through_untouched() -> None:
    proxy = StandInProxy({"a": "chat"})
    app = ReadinessMiddleware(proxy)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": json.dumps({"model": "a"}).encode(), "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
    asyncio.run(app(scope, receive, send))
    assert proxy.calls == [("/v1/completions", "a")] and json.loads(sent[1]["body"]) == {"choices": [{"text": "x"}]}
