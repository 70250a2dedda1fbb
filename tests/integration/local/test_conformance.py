"""OpenAI conformance through Nginx, with the official `openai` client.

The session's real stack (src/deploy.py running Ray Serve LLM on the CPU build
of vLLM with the tiny local model, behind Nginx rendered from the Compose
template) answers every call. Two more Nginx processes from the same template
sit in front of it for what the shared stack does not switch on: one with a
rate limit (429), one whose model server is down (503).

Every error must come back in OpenAI's shape, ``{"error": {"message", "type",
"param", "code"}}``, with the right status, and the client must raise the
matching typed exception with a message free of Ray's internals. The engine
that dies mid-run (503 while its replica is replaced) is in
tests/integration/local/test_hardening.py's kill test, which already pays for that recovery.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from support import assert_openai_error_body, free_port
from support.nginx import NginxStack, base_env
from support.local_stack import API_KEY, BODY_LIMIT, MODEL, LocalStack

pytestmark = [pytest.mark.e2e]

CHAT = [{"role": "user", "content": "Count to five"}]


def make_client(base_url: str, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture()
def client(stack: LocalStack) -> openai.OpenAI:
    return make_client(stack.base_url)


def extra_nginx(stack: LocalStack, workdir: Path, **overrides: str) -> NginxStack:
    settings = {"OPENAI_API_KEY": API_KEY, "RAY_API_PORT": str(stack.api_port),
                "RAY_DASHBOARD_PORT": str(stack.dashboard_port), **overrides}
    env = base_env(**settings)
    return NginxStack(workdir, env).start(with_upstreams=False)


@pytest.fixture(scope="module")
def rate_limited_url(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Nginx with one request a minute per client and no burst, in front of the real stack."""
    nginx = extra_nginx(stack, tmp_path_factory.mktemp("rate-nginx"), NGINX_RATE_LIMIT="1r/m",
                        NGINX_RATE_BURST="0")
    try:
        yield nginx.url
    finally:
        nginx.stop()


@pytest.fixture(scope="module")
def server_down_url(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Nginx whose model server does not run (a port nothing listens on)."""
    nginx = extra_nginx(stack, tmp_path_factory.mktemp("down-nginx"), RAY_API_PORT=str(free_port()))
    try:
        yield nginx.url
    finally:
        nginx.stop()


def assert_clean_error(err: openai.APIStatusError, status: int, code: str | None = None) -> dict[str, Any]:
    """The typed exception carries OpenAI's error object, with no internals in it."""
    assert err.status_code == status, (err.status_code, err.response.text)
    assert err.response.headers["content-type"].startswith("application/json"), err.response.headers
    error = assert_openai_error_body(err.response.json())
    assert "Exception" not in error["message"], error["message"]
    assert isinstance(error["type"], str) and re.fullmatch(r"[a-z_]+", error["type"]), error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    # The client reads the same object: message and code reach the caller.
    assert err.code == error["code"] and isinstance(err.body, dict), (err.code, err.body)
    assert err.body["message"] == error["message"] and error["message"] in err.message, err.message
    if code is not None:
        assert error["code"] == code, error
    return error


# --- Successful calls --------------------------------------------------------------

def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6,
                                           extra_body={"ignore_eos": True})
    assert reply.object == "chat.completion" and reply.model == MODEL and reply.id
    assert len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.index == 0 and choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 6


def test_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5,
                                      extra_body={"ignore_eos": True})
    assert reply.object == "text_completion" and reply.model == MODEL
    assert reply.choices[0].text and reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=8, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    # include_usage: one last chunk with usage and no choices; the others carry none.
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices and c.choices[0].finish_reason]
    assert text and finish == ["length"]


def test_completion_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=7, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


def test_stream_without_usage_option_has_none(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3, stream=True))
    assert chunks and all(c.usage is None for c in chunks)


def test_n_greater_than_one(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, n=3, temperature=1.0,
                                           extra_body={"ignore_eos": True})
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    stream = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, n=2, stream=True,
                                       extra_body={"ignore_eos": True})
    assert {c.choices[0].index for c in stream if c.choices} == {0, 1}


def test_stop_sequences(client: openai.OpenAI) -> None:
    # The tiny model's text is gibberish: learn what it says, then stop on it.
    free = client.completions.create(model=MODEL, prompt="The sky", max_tokens=16, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    assert len(free) > 4, free
    stop = free[len(free) // 2:len(free) // 2 + 2]
    stopped = client.completions.create(model=MODEL, prompt="The sky", max_tokens=16, temperature=0,
                                        stop=[stop], extra_body={"ignore_eos": True}).choices[0]
    assert stopped.finish_reason == "stop", (free, stop, stopped)
    assert stop not in stopped.text and free.startswith(stopped.text), (free, stop, stopped.text)


def test_logprobs(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, logprobs=True,
                                          top_logprobs=2, extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert content is not None and len(content) == 4
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 2
    text = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, logprobs=2,
                                     extra_body={"ignore_eos": True}).choices[0].logprobs
    assert text is not None and len(text.tokens) == 3 and len(text.token_logprobs) == 3
    assert all(len(top) >= 1 for top in text.top_logprobs)


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt="Random words:", max_tokens=12, temperature=1.0,
                                         seed=seed, extra_body={"ignore_eos": True}).choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3)), "different seeds never changed the sample"


def test_max_tokens_bounds(client: openai.OpenAI) -> None:
    one = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)
    assert one.usage is not None and one.usage.completion_tokens == 1
    # The largest max_tokens that still fits MAX_MODEL_LEN (2048 in the test stack).
    prompt_tokens = one.usage.prompt_tokens
    fits = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2048 - prompt_tokens, stream=True)
    assert any(c.choices and c.choices[0].delta.content is not None for c in fits)
    for bad in (0, -1):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=bad)
        error = assert_clean_error(err.value, 400)
        assert error["param"] == "max_tokens" and f"max_tokens must be at least 1, got {bad}" in error["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=0)
    assert assert_clean_error(err.value, 400)["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=100_000)
    error = assert_clean_error(err.value, 400)
    assert error["param"] == "max_tokens" and "100000" in error["message"]


# --- Errors -------------------------------------------------------------------------

def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    calls = (
        lambda: client.chat.completions.create(model="no-such-model", messages=CHAT),
        lambda: client.completions.create(model="no-such-model", prompt="Hi"),
        lambda: client.models.retrieve("no-such-model"),
        lambda: client.chat.completions.create(model="no-such-model", messages=CHAT, stream=True),
    )
    for call in calls:
        with pytest.raises(openai.NotFoundError) as err:
            call()
        error = assert_clean_error(err.value, 404, "model_not_found")
        assert "no-such-model" in error["message"]


def test_wrong_method_is_405(client: openai.OpenAI) -> None:
    for method, path in (("get", "/chat/completions"), ("get", "/completions"), ("delete", "/models")):
        with pytest.raises(openai.APIStatusError) as err:
            getattr(client, method)(path, cast_to=httpx.Response)
        assert_clean_error(err.value, 405, "method_not_allowed")


def test_unknown_path_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.get("/no-such-endpoint", cast_to=httpx.Response)
    assert_clean_error(err.value, 404, "not_found")


@pytest.mark.parametrize("name,body,param", [
    ("missing messages", {"model": MODEL}, "messages"),
    ("wrong type", {"model": MODEL, "messages": CHAT, "temperature": "hot"}, "temperature"),
    ("negative n", {"model": MODEL, "messages": CHAT, "n": 0}, None),
    ("messages not a list", {"model": MODEL, "messages": "hello"}, None),
    ("unknown stream option", {"model": MODEL, "messages": CHAT, "stream_options": {"include_usage": "x"}}, None),
])
def test_validation_failures_are_400(client: openai.OpenAI, name: str, body: dict[str, Any],
                                     param: str | None) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.post("/chat/completions", body=body, cast_to=httpx.Response)
    error = assert_clean_error(err.value, 400)
    if param is not None:
        assert error["param"] == param and param in error["message"], error


def test_malformed_json_is_400(stack: LocalStack) -> None:
    r = httpx.post(stack.base_url + "/v1/chat/completions", content=b'{"model": "tiny-llama", "messages": [',
                   headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}, timeout=30)
    err = openai.BadRequestError(f"Error code: 400 - {r.json()}", response=r, body=r.json()["error"])
    assert_clean_error(err, 400)


def test_auth_is_401(stack: LocalStack) -> None:
    for key in ("wrong-key", API_KEY[:-1], API_KEY.upper()):
        with pytest.raises(openai.AuthenticationError) as err:
            make_client(stack.base_url, api_key=key).models.list()
        assert_clean_error(err.value, 401, "invalid_api_key")


def test_body_too_large_is_413(client: openai.OpenAI) -> None:
    limit = int(BODY_LIMIT.rstrip("k")) * 1024
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * (2 * limit)}])
    assert_clean_error(err.value, 413, "request_too_large")


def test_rate_limit_is_429(rate_limited_url: str) -> None:
    limited = make_client(rate_limited_url)
    assert limited.models.list().data  # the one request this minute allows
    with pytest.raises(openai.RateLimitError) as err:
        limited.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)
    error = assert_clean_error(err.value, 429, "rate_limit_exceeded")
    assert error["type"] == "rate_limit_error"


def test_model_server_down_is_503(server_down_url: str) -> None:
    down = make_client(server_down_url)
    with pytest.raises(openai.InternalServerError) as err:
        down.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)
    error = assert_clean_error(err.value, 503, "model_server_unavailable")
    assert error["type"] == "server_error"
    r = httpx.get(server_down_url + "/readyz", timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"


def test_error_event_in_a_stream_is_clean(stack: LocalStack) -> None:
    """A request that fails after the stream started (here: the prompt is longer
    than MAX_MODEL_LEN) must not leak internals in the event either."""
    body = {"model": MODEL, "stream": True, "max_tokens": 4,
            "messages": [{"role": "user", "content": "word " * 3000}]}
    with httpx.stream("POST", stack.base_url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        text = r.read().decode()
    if r.status_code == 200:
        events = [json.loads(line[6:]) for line in text.splitlines()
                  if line.startswith("data: {") and '"error"' in line]
        assert events, text[:500]
        error = events[0]["error"]
    else:
        assert r.status_code == 400, text
        error = json.loads(text)["error"]
    assert_openai_error_body({"error": error})
