"""Two models from one stack (MODELS_FILE), addressed by name through Nginx.

A stack of its own (scripts/local-stack.sh, like the shared one), started
before the shared stack (conftest orders it), serving the tiny model twice
under two names with different engine settings. /readyz must be ready only
when every model answers: one engine is frozen for a moment (SIGSTOP, then
SIGCONT well inside WATCHDOG_TIMEOUT) and the readiness answer names it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

from conftest import REPO_ROOT, clean_env, session_processes
from docker_support import TINY_MODEL_DIR, make_tiny_model
from readiness import MODEL_TIMEOUT_S
from stack_support import LocalStack, running

pytestmark = pytest.mark.e2e

API_KEY = "sk-multi-model-key"
NAMES = ("tiny-chat", "tiny-small")
READY_HEADER = {"X-Ray-LLM-Ready": "all"}


@pytest.fixture(scope="module")
def two_models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    make_tiny_model()
    weights = TINY_MODEL_DIR
    folder = tmp_path_factory.mktemp("models-file")
    models = folder / "models.yaml"
    models.write_text(
        "models:\n"
        f"  - {{MODEL_ID: tiny-llama, SERVED_MODEL_NAME: {NAMES[0]}, MODEL_SOURCE: {weights}}}\n"
        f"  - {{MODEL_ID: tiny-llama, SERVED_MODEL_NAME: {NAMES[1]}, MODEL_SOURCE: {weights}, MAX_NUM_SEQS: 4,"
        " MAX_MODEL_LEN: 512}\n")
    stack_dir = REPO_ROOT / ".runtime" / f"test-two-models-{os.getpid()}"
    stack = LocalStack(stack_dir, api_key=API_KEY, extra_env={
        "MODELS_FILE": str(models), "MODEL_ID": "", "SERVED_MODEL_NAME": "", "MODEL_SOURCE": "",
        "HF_HUB_OFFLINE": "1", "SERVE_STOP_GRACE_PERIOD": "20s",
        # Longer than the freeze below (readiness, not the watchdog, is tested).
        "WATCHDOG_TIMEOUT": "90"})
    with running(stack, request):
        yield stack


def client(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_both_models_are_listed_and_answer_by_name_through_nginx(two_models: LocalStack) -> None:
    c = client(two_models)
    assert sorted(m.id for m in c.models.list().data) == sorted(NAMES)
    for name in NAMES:
        chat = c.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert chat.model == name and chat.usage is not None and chat.usage.completion_tokens >= 1
        text = c.completions.create(model=name, prompt="hello", max_tokens=3)
        assert text.model == name and text.choices[0].text is not None
    # Each entry's own engine settings: only tiny-small is limited to 512
    # tokens (the tiny tokenizer makes about 2 of each word).
    long_prompt = "word " * 400
    c.completions.create(model=NAMES[0], prompt=long_prompt, max_tokens=1)
    with pytest.raises(openai.BadRequestError) as refused:
        c.completions.create(model=NAMES[1], prompt=long_prompt, max_tokens=1)
    assert refused.value.code == "context_length_exceeded", refused.value.body


def test_readyz_and_the_healthcheck_probe_ask_every_model(two_models: LocalStack) -> None:
    assert httpx.get(two_models.base_url + "/readyz", timeout=30).json() == {"status": "ready"}
    probe = ray_probe(two_models)
    assert probe.status_code == 200, probe.text
    assert probe.json() == {"status": "ready", "models": {name: "ready" for name in NAMES}}
    assert healthcheck(two_models).returncode == 0
    # The header is the readiness probe's only: Nginx drops it from clients'
    # requests, which stay completions (here: no model named, two served).
    r = httpx.post(two_models.base_url + "/v1/completions", json={"prompt": "ping", "max_tokens": 1},
                   headers={"Authorization": f"Bearer {API_KEY}", **READY_HEADER}, timeout=30)
    assert r.status_code == 400 and "status" not in r.json(), r.text


def healthcheck(stack: LocalStack) -> subprocess.CompletedProcess[str]:
    """The Compose healthcheck's own script against this stack's Ray Serve."""
    return subprocess.run([sys.executable, str(REPO_ROOT / "src" / "healthcheck.py")], text=True,
                          capture_output=True, timeout=60, check=False,
                          env=clean_env(RAY_API_PORT=str(stack.api_port)))


def ray_probe(stack: LocalStack, timeout: float = 60) -> httpx.Response:
    """The healthcheck's request (src/healthcheck.py) to Ray Serve directly, for its JSON."""
    return httpx.post(f"http://127.0.0.1:{stack.api_port}/v1/completions", json={"prompt": "ping", "max_tokens": 1},
                      headers=READY_HEADER, timeout=timeout)


def engine_of(stack: LocalStack, name: str) -> int:
    """The vLLM EngineCore process serving model NAME (a child of its replica)."""
    for pid in session_processes(stack.session_pids()["serve"], "EngineCore"):
        parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        if f"LLMServer:{name}" in Path(f"/proc/{parent}/cmdline").read_text():
            return int(pid)
    raise AssertionError(f"no EngineCore process found for {name}")


def test_readiness_names_the_model_that_does_not_answer(two_models: LocalStack) -> None:
    frozen = engine_of(two_models, NAMES[1])
    os.kill(frozen, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        nginx = httpx.get(two_models.base_url + "/readyz", timeout=30)
        assert nginx.status_code == 503 and nginx.json()["error"]["code"] == "model_not_ready", nginx.text
        assert time.monotonic() - t0 < 10
        # The other model still answers by name while this one is stuck.
        client(two_models).completions.create(model=NAMES[0], prompt="hello", max_tokens=2)
        # The container healthcheck waits MODEL_TIMEOUT_S for each model, then names the one missing.
        check = healthcheck(two_models)
    finally:
        # Inside the stack's WATCHDOG_TIMEOUT: the engine resumes, it is not replaced.
        os.kill(frozen, signal.SIGCONT)
    assert check.returncode == 1, check.stderr
    assert f"model {NAMES[1]!r}: no answer within {MODEL_TIMEOUT_S:.0f}s" in check.stderr
    assert NAMES[0] not in check.stderr
    deadline = time.monotonic() + 60
    while (ready := ray_probe(two_models)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert ready.json()["models"] == {name: "ready" for name in NAMES}
    assert healthcheck(two_models).returncode == 0
    assert engine_of(two_models, NAMES[1]) == frozen
