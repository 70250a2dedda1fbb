"""Offline starts, without an engine: the network audit's positive control
(in a loopback-only namespace) and deploy.py's model checks
(src/model_source.py) against loopback-only endpoints. The air-gapped start
itself is tests/integration/offline/test_air_gapped.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

import model_source
from settings import parse_settings
from support import REPO_ROOT, TINY_MODEL_DIR, clean_env, make_tiny_model, netns_missing, run
from support.air_gap import NETAUDIT_DIR, REPO
from support.fake_hub import FakeHub
PYTHON = str(REPO_ROOT / ".runtime" / "venv" / "bin" / "python")


@pytest.fixture
def tiny_hub() -> Iterator[FakeHub]:
    """A stand-in Hub on loopback serving the tiny model as REPO."""
    make_tiny_model()
    hub = FakeHub({REPO: TINY_MODEL_DIR})
    hub.start()
    yield hub
    hub.stop()


def test_network_audit_catches_an_attempt(tmp_path: Path) -> None:
    """The audit's positive control, inside a loopback-only namespace (nothing leaves it)."""
    missing = netns_missing()
    if missing:
        pytest.fail(f"needs a network namespace: {missing}")
    audit = tmp_path / "audit.log"
    code = ("import socket\ntry:\n    socket.create_connection(('198.18.255.254', 9), timeout=1)\n"
            "except OSError:\n    pass\ntry:\n    socket.getaddrinfo('huggingface.co', 443)\nexcept OSError:\n    pass\n")
    done = run(["unshare", "--net", "--", PYTHON, "-c", code], timeout=60, env=clean_env(
        PYTHONPATH=str(NETAUDIT_DIR), NET_AUDIT_LOG=str(audit)))
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


def test_deploy_fetches_the_config_into_the_cache_when_online(tiny_hub: FakeHub, tmp_path: Path) -> None:
    hub = tiny_hub
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
