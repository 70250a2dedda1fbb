"""scripts/download-model.sh (src/download_model.py) against a stand-in Hub on
loopback (tests/support/fake_hub.py, in the Hub's URL layout, reached through
HF_ENDPOINT), so huggingface_hub's real download code runs: a dropped
connection resumed from the byte it stopped at, a re-run that skips finished
files, revision pinning, --include, the token from .secrets (sent, never
printed) and the cache layout vLLM reads offline."""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from support import REPO_ROOT, TINY_MODEL_DIR, clean_env, make_tiny_model, run

from support.fake_hub import FakeHub

REPO = "local-test/tiny-llama"
TOKEN = "hf_DownloadTestToken0123456789"


# huggingface_hub resumes a dropped download at its 10 MiB read-chunk boundary,
# so the repo carries one file big enough to show it.
BIG_FILE = "extra-weights.bin"
BIG_SIZE = 24 << 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's files plus one large (random) file, as a Hub repo."""
    make_tiny_model()
    repo = tmp_path_factory.mktemp("repo")
    for item in TINY_MODEL_DIR.iterdir():
        if item.is_file() and not item.name.startswith("."):
            shutil.copy(item, repo / item.name)
    (repo / BIG_FILE).write_bytes(random.Random(0).randbytes(BIG_SIZE))
    return repo


@pytest.fixture
def hub(model_dir: Path) -> Iterator[FakeHub]:
    hub = FakeHub({REPO: model_dir}, token=TOKEN)
    hub.start()
    yield hub
    hub.stop()


def secrets(tmp_path: Path, token: str | None = TOKEN) -> Path:
    path = tmp_path / "secrets"
    path.write_text(f"HF_TOKEN={token}\n" if token else "OPENAI_API_KEY=\n")
    path.chmod(0o600)
    return path


def download(hub: FakeHub, tmp_path: Path, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = clean_env(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"),
                    RAY_LLM_SECRETS_FILE=str(secrets(tmp_path, token)), HF_HUB_OFFLINE="",
                    HF_HUB_DISABLE_PROGRESS_BARS="1")
    return run(["bash", str(REPO_ROOT / "scripts" / "download-model.sh"), *args], env=env, timeout=180)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_files(a: Path, b: Path, names: list[str] | None = None) -> None:
    names = names or sorted(p.name for p in b.iterdir() if p.is_file() and not p.name.startswith("."))
    assert sorted(p.name for p in a.iterdir() if p.is_file() and not p.name.startswith(".")) == names
    for name in names:
        assert sha256(a / name) == sha256(b / name), name


def test_dropped_connection_resumes_from_where_it_stopped(hub: FakeHub, tmp_path: Path, model_dir: Path) -> None:
    hub.cut_once = {BIG_FILE}
    dest = tmp_path / "models" / "tiny"
    done = download(hub, tmp_path, "--model", REPO, "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(dest)
    same_files(dest, model_dir)
    ranges = [g.range for g in hub.gets(BIG_FILE)]
    assert len(ranges) == 2 and ranges[0] is None, ranges
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-")) if ranges[1] else 0
    assert 0 < resumed_at <= BIG_SIZE // 2, f"the second GET must resume, not restart: {ranges}"
    # The token from .secrets went with every request for the repo, and was never printed.
    # (huggingface_hub 2.x also fetches /api/agent-harnesses, without a token.)
    repo_requests = [r for r in hub.requests if REPO in r.path]
    assert repo_requests and [r for r in repo_requests if r.authorization != f"Bearer {TOKEN}"] == []
    assert TOKEN not in done.stdout + done.stderr


def test_rerun_after_a_failure_skips_finished_files(hub: FakeHub, tmp_path: Path, model_dir: Path) -> None:
    hub.failing = {BIG_FILE: 500}
    dest = tmp_path / "models" / "tiny"
    first = download(hub, tmp_path, "--model", REPO, "--dest", str(dest))
    assert first.returncode == 1
    assert "download failed" in first.stderr and "run it again to resume" in first.stderr
    assert not (dest / BIG_FILE).exists()
    hub.failing = {}
    second = download(hub, tmp_path, "--model", REPO, "--dest", str(dest))
    assert second.returncode == 0, second.stderr
    same_files(dest, model_dir)
    for name in ("config.json", "tokenizer.json"):
        assert len(hub.gets(name)) == 1, f"{name} was downloaded again"


def test_revision_pin_and_include(hub: FakeHub, tmp_path: Path, model_dir: Path) -> None:
    dest = tmp_path / "json-only"
    done = download(hub, tmp_path, "--model", REPO, "--revision", FakeHub.commit(REPO), "--include", "*.json",
                    "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    same_files(dest, model_dir, sorted(p.name for p in model_dir.iterdir() if p.suffix == ".json"))
    assert all(FakeHub.commit(REPO) in r.path for r in hub.requests if "/resolve/" in r.path)
    bad = download(hub, tmp_path, "--model", REPO, "--revision", "no-such-branch", "--dest", str(tmp_path / "x"))
    assert bad.returncode == 1 and "revision 'no-such-branch' of local-test/tiny-llama does not exist" in bad.stderr


def test_gated_model_without_a_token(hub: FakeHub, tmp_path: Path) -> None:
    done = download(hub, tmp_path, "--model", REPO, "--dest", str(tmp_path / "x"), token=None)
    assert done.returncode == 1
    assert "is gated" in done.stderr and "HF_TOKEN in .secrets" in done.stderr


def test_into_the_cache_then_found_offline(hub: FakeHub, tmp_path: Path, model_dir: Path) -> None:
    """Without --dest, python src/download_model.py fills HF_HOME's cache (what the
    image does in the model-cache volume); then huggingface_hub finds it with
    HF_HUB_OFFLINE=1, the way vLLM looks the model up."""
    python = sys.executable
    home = tmp_path / "hf-home"
    env = clean_env(HF_ENDPOINT=hub.url, HF_HOME=str(home), RAY_LLM_SECRETS_FILE=str(secrets(tmp_path)),
                    HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_OFFLINE="")
    done = run([python, str(REPO_ROOT / "src" / "download_model.py"), "--model", REPO], env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    snapshot = home / "hub" / "models--local-test--tiny-llama" / "snapshots" / FakeHub.commit(REPO)
    same_files(snapshot, model_dir)
    hub.stop()  # nothing answers now
    offline = run([python, "-c", "from huggingface_hub import snapshot_download; "
                   f"print(snapshot_download({REPO!r}))"], env={**env, "HF_HUB_OFFLINE": "1"}, timeout=60)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.strip() == str(snapshot)


def test_offline_setting_refuses_to_download(tmp_path: Path) -> None:
    env = clean_env(HF_HUB_OFFLINE="1", RAY_LLM_SECRETS_FILE=str(secrets(tmp_path)))
    done = run(["bash", str(REPO_ROOT / "scripts" / "download-model.sh"), "--model", REPO, "--dest",
                str(tmp_path / "x")], env=env, timeout=60)
    assert done.returncode == 2 and "HF_HUB_OFFLINE is set" in done.stderr


def test_models_file_downloads_every_entry_without_a_source(hub: FakeHub, tmp_path: Path, model_dir: Path) -> None:
    """No --model with MODELS_FILE: each entry's MODEL_ID into the cache, one
    after the other; an entry with MODEL_SOURCE is skipped; --dest with
    several models is refused before anything is fetched."""
    second = "local-test/tiny-llama-2"
    hub.repos[second] = model_dir
    models_file = tmp_path / "models.yaml"
    models_file.write_text(f"models:\n  - {{MODEL_ID: {REPO}, SERVED_MODEL_NAME: a}}\n"
                           f"  - {{MODEL_ID: {second}, SERVED_MODEL_NAME: b}}\n"
                           "  - {MODEL_ID: local/own, SERVED_MODEL_NAME: c, MODEL_SOURCE: /models/own}\n")
    python = sys.executable
    home = tmp_path / "hf-home"
    env = clean_env(HF_ENDPOINT=hub.url, HF_HOME=str(home), RAY_LLM_SECRETS_FILE=str(secrets(tmp_path)),
                    HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_OFFLINE="", MODELS_FILE=str(models_file), MODEL_ID="",
                    GPUS_PER_NODE="3")  # validated as deploy.py does: the 3 models fit
    refused = run([python, str(REPO_ROOT / "src" / "download_model.py"), "--dest", str(tmp_path / "one")],
                  env=env, timeout=60)
    assert refused.returncode == 2 and "--dest is one folder" in refused.stderr, refused.stderr
    assert not home.exists() and not (tmp_path / "one").exists()
    done = run([python, str(REPO_ROOT / "src" / "download_model.py")], env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    for repo in (REPO, second):
        snapshot = home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / FakeHub.commit(repo)
        same_files(snapshot, model_dir)
        assert str(snapshot) in done.stdout.splitlines()
    assert "local/own" not in done.stderr
