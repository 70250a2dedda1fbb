"""`deploy.py --serve-config` on a real Ray cluster: `ray start --head` as the
head profile starts it, with the emitted ray-node.env (and the cluster's token
from the environment, as a secret store would give it), then `serve deploy`
of the emitted serve-config.yaml, and the project's Nginx in front
(`local-stack.sh up --no-wait nginx`). No deploy.py runs the app here.

Through Nginx, as on the Compose stack: readiness (a completion from the
model), a chat completion, an unknown model as OpenAI's 404, and the hang
watchdog's model server class running with the bound from ray-node.env.
Own folder: its engine may not share the machine with another stack.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
import yaml

from support import REPO_ROOT, TINY_MODEL_DIR, assert_openai_error_body, clean_env, free_port, make_tiny_model
from support.compose_stack import wait_for
from support.local_stack import API_KEY, MODEL, RAY_TOKEN, LocalStack, auth, running

pytestmark = [pytest.mark.e2e]

PYTHON = Path(sys.executable)
WATCHDOG_S = "20"


@dataclass
class RayHead:
    """`ray start --head --block` in a session of its own, on loopback."""

    root: Path
    env: dict[str, str]
    gcs_port: int
    dashboard_port: int
    proc: subprocess.Popen[bytes] | None = None
    # Short: Ray's socket paths under it must fit in 107 bytes.
    temp_dir: Path = Path(f"/tmp/rsc-{os.getpid()}")

    def start(self) -> None:
        cmd = [str(PYTHON.parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--metrics-export-port={free_port()}", "--disable-usage-stats", "--num-cpus=2",
               f"--temp-dir={self.temp_dir}"]
        with (self.root / "ray-start.log").open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def serve(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PYTHON.parent / "serve"), *args, "--address",
                               f"http://127.0.0.1:{self.dashboard_port}"], env=self.env, text=True,
                              capture_output=True, timeout=timeout, check=False)

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        # Ray's daemons run in the same session; none may outlive the test.
        subprocess.run(["pkill", "-KILL", "-s", str(self.proc.pid)], check=False)


def node_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    make_tiny_model()
    root = Path(tmp_path_factory.mktemp("serveconfig"))
    api_port = free_port()
    settings = {"MODEL_SOURCE": str(TINY_MODEL_DIR), "SERVED_MODEL_NAME": MODEL, "DEVICE": "cpu",
                "MAX_NUM_SEQS": "8", "MAX_MODEL_LEN": "2048", "WATCHDOG_TIMEOUT": WATCHDOG_S,
                "RAY_API_HOST": "127.0.0.1", "RAY_API_PORT": str(api_port), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([str(PYTHON), str(REPO_ROOT / "src" / "deploy.py"), "--serve-config", str(root / "out")],
                         env=clean_env(**settings), text=True, capture_output=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    node_env = node_env_file(root / "out" / "ray-node.env")
    # Ray's usage report off, its one "disabled" report too: nothing leaves the machine.
    assert node_env["RAY_USAGE_STATS_ENABLED"] == "0" and node_env["RAY_USAGE_STATS_REPORT_URL"] == ""
    # The cluster's secret store gives every node the token; nothing else from .env or .secrets.
    env = clean_env(**node_env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=RAY_TOKEN, HF_HUB_OFFLINE="1",
                    VLLM_CPU_KVCACHE_SPACE="1")
    head = RayHead(root, env, gcs_port=free_port(), dashboard_port=free_port())
    stack = LocalStack(root / "nginx", api_key=API_KEY,
                       extra_env={"RAY_API_PORT": str(api_port), "RAY_AUTH_TOKEN": RAY_TOKEN})
    failed_before = request.session.testsfailed
    try:
        head.start()
        wait_for("the Ray head's dashboard", lambda: head.serve("status", timeout=60).returncode == 0, timeout=180)
        deployed = head.serve("deploy", str(root / "out" / "serve-config.yaml"))
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        with running(stack, request, wait=False, parts=("nginx",)) as s:
            wait_for("/readyz through nginx", lambda: ready(s), timeout=600, interval=3)
            s.head = head  # type: ignore[attr-defined]
            yield s
    finally:
        if request.session.testsfailed > failed_before:
            print(head.serve("status", timeout=60).stdout)
            print((root / "ray-start.log").read_text()[-3000:])
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)


def ready(s: LocalStack) -> bool:
    try:
        return httpx.get(f"{s.base_url}/readyz", timeout=60).status_code == 200
    except httpx.HTTPError:
        return False


def client(s: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{s.base_url}/v1", api_key=API_KEY, timeout=120, max_retries=0)


def test_readiness_answers_as_on_the_compose_stack(cluster: LocalStack) -> None:
    """Nginx's /readyz: its probe (a 1-token completion for every model, through
    the middleware that ray-node.env installs) passed."""
    r = httpx.get(f"{cluster.base_url}/readyz", timeout=60)
    assert r.status_code == 200 and r.json() == {"status": "ready"}, r.text


def test_a_completion_through_nginx(cluster: LocalStack) -> None:
    reply = client(cluster).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0)
    assert reply.model == MODEL and reply.choices[0].message.content is not None
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    # Nginx's key check holds in front of the deployed config too.
    assert httpx.get(f"{cluster.base_url}/v1/models", timeout=30).status_code == 401


def test_an_unknown_model_is_openais_404(cluster: LocalStack) -> None:
    r = httpx.post(f"{cluster.base_url}/v1/chat/completions", headers=auth(), timeout=60,
                   json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404, r.text
    assert assert_openai_error_body(r.json())["code"] == "model_not_found"


def test_the_watchdog_server_class_runs_with_its_bound(cluster: LocalStack) -> None:
    status = cluster.head.serve("status", timeout=60)  # type: ignore[attr-defined]
    assert status.returncode == 0, status.stderr
    apps = yaml.safe_load(status.stdout)["applications"]
    deployments = apps["llm"]["deployments"]
    assert f"WatchedLLMServer:{MODEL}" in deployments, json.dumps(deployments)
    assert deployments[f"WatchedLLMServer:{MODEL}"]["status"] == "HEALTHY"
    # The replica's process environment carries ray-node.env's bound.
    pids = subprocess.run(["pgrep", "-f", f"ServeReplica:llm:WatchedLLMServer:{MODEL}"], text=True,
                          capture_output=True, check=False).stdout.split()
    assert pids, "no model replica process"
    environ = Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
    assert f"WATCHDOG_TIMEOUT={WATCHDOG_S}".encode() in environ
