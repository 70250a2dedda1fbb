"""Offline and air-gapped starts.

The end-to-end test is the air-gapped workflow: scripts/download-model.sh
--dest fills a MODELS_DIR-style folder from a stand-in Hub on loopback
(tests/fake_hub.py); then the stack (scripts/local-stack.sh: deploy.py, Ray
Serve LLM, vLLM, Nginx) starts with MODEL_SOURCE pointing into that folder,
made read-only like Compose's mount, and HF_HUB_OFFLINE=1, inside a network
namespace that has nothing but loopback, and answers the openai client there.
Every Python process of the stack runs tests/netaudit/sitecustomize.py, which
logs each connection attempt and name lookup that is not loopback; the test
fails on any (UDP "connects", which send nothing, are only route lookups;
the test allows vLLM's to 8.8.8.8). It found Ray's usage report probing cloud
metadata addresses, now off by default (RAY_USAGE_STATS_ENABLED=0). Native code cannot reach anything either: the namespace has no
route out. The model checks of deploy.py (src/model_source.py) are tested
below with loopback-only endpoints.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

import model_source
from conftest import REPO_ROOT, clean_env, run
from docker_support import TINY_MODEL_DIR, make_tiny_model
from fake_hub import FakeHub
from settings import parse_settings
from stack_support import LocalStack

REPO = "local-test/tiny-llama"
API_KEY = "sk-offline-test-key"
PYTHON = str(REPO_ROOT / ".runtime" / "venv" / "bin" / "python")


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    make_tiny_model()
    hub = FakeHub({REPO: TINY_MODEL_DIR})
    hub.start()
    yield hub
    hub.stop()


def make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def netns_missing() -> str | None:
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


@pytest.mark.e2e
@pytest.mark.offline
def test_air_gapped_start_makes_no_network_call(hub: FakeHub, tmp_path: Path) -> None:
    missing = netns_missing()
    if missing:
        pytest.fail(f"the offline test needs a network namespace: {missing} (scripts/test.sh installs util-linux, iproute2)")
    models = tmp_path / "models"
    fetched = run(["bash", str(REPO_ROOT / "scripts" / "download-model.sh"), "--model", REPO, "--dest",
                   str(models / "tiny")], env=clean_env(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"),
                                                        HF_HUB_DISABLE_PROGRESS_BARS="1"), timeout=180)
    assert fetched.returncode == 0, fetched.stderr
    hub.stop()
    shutil.rmtree(models / "tiny" / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
    make_read_only(models)

    audit = tmp_path / "net-audit.log"
    stack = LocalStack(tmp_path / "stack", api_key=API_KEY, extra_env={
        "MODEL_ID": REPO, "MODEL_SOURCE": str(models / "tiny"), "SERVED_MODEL_NAME": "tiny-llama",
        "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-empty"),
        # Somewhere inside the test range that nothing in the namespace can reach.
        "HF_ENDPOINT": "http://198.18.255.254:9",
        "PYTHONPATH": str(REPO_ROOT / "tests" / "netaudit"), "NET_AUDIT_LOG": str(audit),
    })
    env = stack.env()
    script = f"ip link set lo up && exec bash {REPO_ROOT / 'scripts' / 'local-stack.sh'} up"
    try:
        up = subprocess.run(["unshare", "--net", "--", "bash", "-c", script], env=env, text=True,
                            capture_output=True, timeout=900, check=False)
        assert up.returncode == 0, f"the offline start failed:\n{up.stderr[-4000:]}\n{stack.log_tails()}"
        serve_pid = stack.session_pids()["serve"]
        assert serve_pid
        # The openai client, in the same namespace, through Nginx.
        client = (f"import openai; c = openai.OpenAI(base_url='{stack.base_url}/v1', api_key='{API_KEY}'); "
                  "r = c.chat.completions.create(model='tiny-llama', max_tokens=4, "
                  "messages=[{'role': 'user', 'content': 'hi'}]); print(r.usage.completion_tokens)")
        asked = run(["nsenter", f"--net=/proc/{serve_pid}/ns/net", PYTHON, "-c", client],
                    env={**clean_env(), "NO_PROXY": "*"}, timeout=120)
        assert asked.returncode == 0 and asked.stdout.strip() == "4", asked.stderr
        # From outside the namespace nothing answers: the stack really is in there.
        assert subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{stack.http_port}"],
                              capture_output=True, timeout=10).returncode != 0
    finally:
        down = stack.down()
    assert down.returncode == 0, down.stderr
    logged = audit.read_text().splitlines() if audit.exists() else []
    attempts = [line for line in logged if not known_upstream_probe(line)]
    assert attempts == [], "network calls during an offline start:\n" + "\n".join(attempts)
    # The audit really ran in the stack's processes: deploy.py, Ray's workers, vLLM's engine.
    loaded = Path(f"{audit}.loaded").read_text()
    for process in ("deploy.py", "default_worker.py", "multiprocessing"):
        assert process in loaded, f"the network audit did not run in {process}:\n{loaded[-2000:]}"


# What upstream does at every start that cannot be switched off (plan.md, risks):
# vLLM's get_ip asks the kernel for a route with a UDP connect, which sends
# nothing; Ray's dashboard asks the link-local cloud metadata service which cloud
# it runs on, even with RAY_USAGE_STATS_ENABLED=0 (usage_stats_head.run).
UPSTREAM_PROBES = (
    (": udp-route-lookup ", ("('8.8.8.8', 80)", "('2001:4860:4860::8888', 80")),
    ("/ray/dashboard/dashboard.py", ("'169.254.169.254'", "('169.254.169.254', 80)", "'metadata.google.internal'")),
)


def known_upstream_probe(line: str) -> bool:
    return any(where in line and any(line.split(": ", 1)[1].split(" ", 1)[1].startswith(t) for t in targets)
               for where, targets in UPSTREAM_PROBES)


def test_network_audit_catches_an_attempt(tmp_path: Path) -> None:
    """The audit's positive control, inside a loopback-only namespace (nothing leaves it)."""
    missing = netns_missing()
    if missing:
        pytest.fail(f"needs a network namespace: {missing}")
    audit = tmp_path / "audit.log"
    code = ("import socket\ntry:\n    socket.create_connection(('198.18.255.254', 9), timeout=1)\n"
            "except OSError:\n    pass\ntry:\n    socket.getaddrinfo('huggingface.co', 443)\nexcept OSError:\n    pass\n")
    done = run(["unshare", "--net", "--", PYTHON, "-c", code], timeout=60, env=clean_env(
        PYTHONPATH=str(REPO_ROOT / "tests" / "netaudit"), NET_AUDIT_LOG=str(audit)))
    assert done.returncode == 0, done.stderr
    logged = audit.read_text()
    assert "connect ('198.18.255.254', 9)" in logged and "getaddrinfo 'huggingface.co'" in logged
    assert "udp-route-lookup" not in logged


# --- deploy.py's model checks (src/model_source.py), loopback only -------------------

def settings_for(**env: str):  # type: ignore[no-untyped-def]
    return parse_settings({"MODEL_ID": REPO, "DEVICE": "cpu", **env})


def test_model_source_must_hold_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for source, text in ((tmp_path / "nope", "does not exist"), (tmp_path / "empty", "holds no config.json")):
        found = model_source.problems(settings_for(MODEL_SOURCE=str(source)), {})
        assert len(found) == 1 and found[0].startswith(f"MODEL_SOURCE={source} {text}")
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert model_source.problems(settings_for(MODEL_SOURCE=str(tmp_path / "empty")), {}) == []


def test_offline_and_not_cached_names_the_variables() -> None:
    def never(*_args: object) -> str | None:
        raise AssertionError("no network call when HF_HUB_OFFLINE=1")

    found = model_source.problems(settings_for(), {"HF_HUB_OFFLINE": "1", "HF_HOME": "/srv/hf"},
                                  cached=lambda _m: False, fetch_config=never)
    assert found and found[0].startswith(f"MODEL_ID={REPO} is not in the Hugging Face cache (HF_HOME=/srv/hf)")
    assert "MODEL_SOURCE" in found[0] and "scripts/download-model.sh" in found[0] and "HF_HUB_OFFLINE" in found[0]
    assert model_source.problems(settings_for(), {"HF_HUB_OFFLINE": "1"}, cached=lambda _m: True,
                                 fetch_config=never) == []


def deploy(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    secrets = tmp_path / "secrets"
    secrets.write_text("")
    secrets.chmod(0o600)
    return run([PYTHON, str(REPO_ROOT / "src" / "deploy.py")], timeout=120, env=clean_env(
        RAY_LLM_SECRETS_FILE=str(secrets), MODEL_ID=REPO, DEVICE="cpu", MODEL_SOURCE="",
        HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_PROGRESS_BARS="1", **env))


def test_deploy_refuses_an_uncached_model_offline(tmp_path: Path) -> None:
    done = deploy(tmp_path, HF_HUB_OFFLINE="1")
    assert done.returncode == 2, done.stderr
    assert "nothing was started" in done.stderr and f"MODEL_ID={REPO} is not in the Hugging Face cache" in done.stderr
    assert "ray" not in done.stderr.lower().replace("ray-llm", "")  # stopped before Ray


def test_deploy_refuses_when_the_hub_is_unreachable(tmp_path: Path) -> None:
    with __import__("socket").socket() as sock:  # a closed loopback port: the Hub "down"
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = deploy(tmp_path, HF_HUB_OFFLINE="", HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_ETAG_TIMEOUT="5")
    assert done.returncode == 2, done.stderr
    assert f"MODEL_ID={REPO} is not in the Hugging Face cache and the Hub is unreachable" in done.stderr
    assert f"(http://127.0.0.1:{port})" in done.stderr and "MODEL_SOURCE" in done.stderr


def test_deploy_fetches_the_config_into_the_cache_when_online(hub: FakeHub, tmp_path: Path) -> None:
    env = {"HF_ENDPOINT": hub.url}
    code = ("import os, sys; sys.path.insert(0, 'src'); import model_source, settings; "
            f"s = settings.parse_settings({{'MODEL_ID': {REPO!r}, 'DEVICE': 'cpu'}}); "
            "print(model_source.problems(s, os.environ))")
    done = run([PYTHON, "-c", code], cwd=REPO_ROOT, timeout=60,
               env=clean_env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="", **env))
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
    assert [r.path for r in hub.requests if r.method == "GET" and "/resolve/" in r.path] == [
        f"/{REPO}/resolve/main/config.json"]
    cached = subprocess.run([PYTHON, "-c", "from huggingface_hub import try_to_load_from_cache as t; "
                             f"print(t({REPO!r}, 'config.json'))"], capture_output=True, text=True, timeout=60,
                            env=clean_env(HF_HOME=str(tmp_path / "hf")))
    assert cached.stdout.strip().endswith("config.json")
