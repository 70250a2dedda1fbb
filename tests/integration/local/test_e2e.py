"""End to end on CPU: src/deploy.py runs Ray Serve LLM on the CPU build of vLLM
with the tiny local model, behind real Nginx rendered from the Compose
template; the official openai client talks to it. Nothing is mocked.

The stack is this folder's (tests/integration/local/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Iterator

import httpx
import openai
import pytest

from support import assert_openai_error_body
from support.nginx import NginxStack, base_env
from support.local_stack import API_KEY, DASH_PASSWORD, DASH_USER, MODEL, LocalStack

pytestmark = [pytest.mark.e2e]

# Long enough (~1.5 s on 2 cores) that arrival times show streaming: with a few
# hundred tokens the tiny model finishes before Ray Serve's 2-core scheduling
# settles, and chunks bunch up even without Nginx (measured; see plan.md).
STREAM_TOKENS = 1500


@pytest.fixture(scope="module")
def open_nginx(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second Nginx from the same template, without an API key, in front of the same Serve."""
    nginx = NginxStack(tmp_path_factory.mktemp("open-nginx"),
                       base_env(OPENAI_API_KEY="", RAY_API_PORT=str(stack.api_port),
                                RAY_DASHBOARD_PORT=str(stack.dashboard_port)))
    nginx.start(with_upstreams=False)
    try:
        yield nginx.url
    finally:
        nginx.stop()


@pytest.fixture()
def client(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert_openai_error_body(body)
    return body


def good_request_works(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].message.content is not None


def test_models_lists_served_name(client: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in client.models.list().data]


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello"}],
                                           max_tokens=12, extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    assert reply.choices[0].message.content


def test_text_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                      extra_body={"ignore_eos": True})
    assert reply.choices[0].text and reply.usage is not None and reply.usage.completion_tokens == 8


def stream_once(client: openai.OpenAI) -> tuple[list[float], str | None, object]:
    start = time.monotonic()
    arrivals: list[float] = []
    finish_reason = None
    usage = None
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell a long story"}], max_tokens=STREAM_TOKENS,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                arrivals.append(time.monotonic() - start)
            if choice.finish_reason:
                finish_reason = choice.finish_reason
    return arrivals, finish_reason, usage


def test_chat_stream_arrives_as_a_stream(client: openai.OpenAI) -> None:
    # On 2 cores the CPU engine sometimes starves Ray Serve's output path for a
    # second, even with no Nginx in front (measured, plan.md). Buffering is a
    # deterministic defect and fails every attempt; a scheduling stall does not.
    attempts = []
    for _ in range(3):
        arrivals, finish_reason, usage = stream_once(client)
        assert finish_reason == "length"
        assert usage is not None and usage.completion_tokens == STREAM_TOKENS
        assert len(arrivals) >= 5, f"only {len(arrivals)} content chunks"
        first, last = arrivals[0], arrivals[-1]
        attempts.append(f"first content chunk at {first:.3f}s, last at {last:.3f}s")
        if first < 0.5 * last:
            return
    pytest.fail("the stream arrived all at once in every attempt: " + "; ".join(attempts))


def test_text_completion_stream(client: openai.OpenAI) -> None:
    texts = []
    finish = None
    for chunk in client.completions.create(model=MODEL, prompt="Hello", max_tokens=20, stream=True,
                                           extra_body={"ignore_eos": True}):
        for choice in chunk.choices:
            texts.append(choice.text)
            finish = choice.finish_reason or finish
    assert "".join(texts) and finish == "length"


def test_api_key_is_enforced(stack: LocalStack, client: openai.OpenAI) -> None:
    url = stack.base_url + "/v1/models"
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY}):
        body = assert_openai_error(httpx.get(url, headers=headers), 401)
        assert body["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=stack.base_url + "/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(url, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    good_request_works(client)


def test_without_api_key_requests_go_through(open_nginx: str) -> None:
    open_client = openai.OpenAI(base_url=open_nginx + "/v1", api_key="anything", max_retries=0)
    good_request_works(open_client)
    assert httpx.get(open_nginx + "/v1/models").status_code == 200


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def test_oversized_body_gets_413(stack: LocalStack, client: openai.OpenAI) -> None:
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 100_000}]})
    r = httpx.post(stack.base_url + "/v1/chat/completions", content=big,
                   headers={**auth(), "Content-Type": "application/json"})
    assert_openai_error(r, 413)
    good_request_works(client)


def test_malformed_json_gets_400(stack: LocalStack, client: openai.OpenAI) -> None:
    r = httpx.post(stack.base_url + "/v1/chat/completions", content=b'{"model": "tiny-llama", "messages": [',
                   headers={**auth(), "Content-Type": "application/json"})
    assert_openai_error(r, 400)
    good_request_works(client)


def test_unknown_model_gets_404(stack: LocalStack, client: openai.OpenAI) -> None:
    r = httpx.post(stack.base_url + "/v1/chat/completions", headers=auth(),
                   json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(r, 404)
    good_request_works(client)


def test_local_stack_status(stack: LocalStack) -> None:
    out = stack.run("status", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "serve: running" in out.stdout and "nginx: running" in out.stdout and "model: answering" in out.stdout
    logs = stack.run("logs", timeout=60)
    assert logs.returncode == 0 and "serve.log" in logs.stdout


def test_the_start_skips_rays_download_task(stack: LocalStack) -> None:
    """src/node_init.py: with local weights Ray's per-node download task (a
    fresh worker importing torch, 7.6 s of every start) never runs."""
    log = stack.serve_log()
    assert "Running tasks to download model files" not in log
    assert "init engine (profile, create kv cache, warmup model)" in log


def test_the_start_creates_no_telemetry_actor(stack: LocalStack) -> None:
    """src/no_telemetry.py: with usage stats off (.env's RAY_USAGE_STATS_ENABLED=0)
    no replica creates Ray Serve LLM's TelemetryAgent (a new Ray worker process
    on the way to readiness). Asked of Ray's own state API, through Nginx."""
    actors = httpx.get(stack.base_url + "/dashboard/api/v0/actors", params={"limit": "1000"},
                       auth=(DASH_USER, DASH_PASSWORD), timeout=30)
    assert actors.status_code == 200, actors.text
    classes = {row["class_name"] for row in actors.json()["data"]["result"]["result"]}
    assert {"ServeController", "ServeReplica:llm:OpenAiIngress"} <= classes, classes
    assert not any("Telemetry" in name for name in classes), classes


def test_health_ready_and_dashboard(stack: LocalStack) -> None:
    health = httpx.get(stack.base_url + "/healthz")
    assert health.status_code == 200
    ready = httpx.get(stack.base_url + "/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert_openai_error(httpx.get(stack.base_url + "/dashboard/", timeout=30), 401)
    creds = (DASH_USER, DASH_PASSWORD)
    dashboard = httpx.get(stack.base_url + "/dashboard/", auth=creds, timeout=30)
    assert dashboard.status_code == 200 and "<html" in dashboard.text.lower()
    # Ray's own token auth is satisfied by Nginx (RAY_AUTH_TOKEN), not by the client.
    version = httpx.get(stack.base_url + "/dashboard/api/version", auth=creds, timeout=30)
    assert version.status_code == 200 and "ray_version" in version.json()
    apps = httpx.get(stack.base_url + "/dashboard/api/serve/applications/", auth=creds, timeout=30)
    assert apps.status_code == 200 and apps.json()["applications"]["llm"]["status"] == "RUNNING"


def test_sixteen_concurrent_streams(stack: LocalStack) -> None:
    async def one(aclient: openai.AsyncOpenAI, i: int) -> int:
        tokens = 0
        finish = None
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Story {i}"}], max_tokens=48, stream=True,
            extra_body={"ignore_eos": True})
        async for chunk in stream:
            for choice in chunk.choices:
                tokens += 1 if choice.delta.content else 0
                finish = choice.finish_reason or finish
        assert finish == "length", f"stream {i} ended with {finish}"
        return tokens

    async def all_streams() -> list[int]:
        async with openai.AsyncOpenAI(base_url=stack.base_url + "/v1", api_key=API_KEY, max_retries=0,
                                      timeout=120) as aclient:
            return await asyncio.gather(*(one(aclient, i) for i in range(16)))

    counts = asyncio.run(all_streams())
    assert len(counts) == 16 and all(c > 0 for c in counts), counts
