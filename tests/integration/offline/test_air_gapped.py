"""Offline and air-gapped starts.

The end-to-end test is the air-gapped workflow: scripts/download-model.sh
--dest fills a MODELS_DIR-style folder from a stand-in Hub on loopback
(tests/support/fake_hub.py); then the stack (scripts/local-stack.sh: deploy.py, Ray
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

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from support import REPO_ROOT, clean_env, netns_missing, run
from support.fake_hub import FakeHub
from support.local_stack import LocalStack

pytestmark = [pytest.mark.e2e]

REPO = "local-test/tiny-llama"
API_KEY = "sk-offline-test-key"
PYTHON = str(REPO_ROOT / ".runtime" / "venv" / "bin" / "python")


def make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_air_gapped_start_makes_no_network_call(tiny_hub: FakeHub, tmp_path: Path) -> None:
    hub = tiny_hub
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
