"""Two-host Ray cluster on one machine, started by the Compose profiles' entry
point (docker/ray-node.sh) on the CPU engine, with Nginx on the head.

The head starts with --num-cpus=0, so the model's placement group can only go
to the worker: a completion through the head's Nginx proves the cross-node
path (Nginx -> Serve proxy on head -> replica and engine on worker). The
cluster is the folder's (conftest.py); the last test here takes the head away.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import kill_if_stopped, process_gone, session_processes
from support.cluster import API_KEY, SHARED_NCCL, TOKEN, Cluster, poll
from support.monitoring import Prometheus

pytestmark = [pytest.mark.multinode]

def test_worker_joins_and_cluster_has_two_nodes(cluster: Cluster) -> None:
    nodes = list(cluster.nodes.values())
    poll("the worker to join", lambda: "2 of 2 nodes are up" in cluster.nodes["head"].log_path.read_text(),
         240, nodes)
    assert cluster.alive_node_ips() == sorted([cluster.hosts.head.ip, cluster.hosts.worker.ip])
    head_log = cluster.nodes["head"].log_path.read_text()
    assert "RDMA devices:" in head_log and "NCCL_SOCKET_IFNAME:" in head_log
    assert f"VLLM_HOST_IP {cluster.hosts.head.ip} is assigned on this node" in head_log


def test_engine_on_worker_answers_through_head_nginx(cluster: Cluster) -> None:
    poll("a completion through the head's nginx", lambda: cluster.completion() is not None, 600,
         list(cluster.nodes.values()), interval=5)
    placed = cluster.ray_probe(
        "from ray.util.state import list_actors\n"
        "ips = {n['NodeID']: n['NodeManagerAddress'] for n in ray.nodes()}\n"
        "print(json.dumps(sorted({ips[a.node_id] for a in list_actors(filters=[('state', '=', 'ALIVE')]) "
        "if 'LLMServer' in a.class_name})))")
    assert placed == [cluster.hosts.worker.ip], f"LLMServer replicas on {placed}"
    # The head's Serve proxy puts errors in OpenAI's shape (ray-node.sh sets its middleware).
    body = json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    out = subprocess.run([*cluster.hosts.head.prefix(), "curl", "-s", "--max-time", "30", "-w", "\\n%{http_code}",
                          "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {API_KEY}", "-d", body,
                          f"http://127.0.0.1:{cluster.http_port}/v1/chat/completions"],
                         text=True, capture_output=True, check=False)
    answer, status = out.stdout.rsplit("\n", 1)
    assert status == "404" and json.loads(answer)["error"]["code"] == "model_not_found", out.stdout


def test_head_prometheus_scrapes_both_nodes_and_nginx(cluster: Cluster, tmp_path: Path) -> None:
    """Profile monitoring-head's Prometheus configuration (rendered by Compose
    for head,monitoring-head), run on the head host: every node's Ray metrics
    port and the head Nginx's status page (through the exporter) are up, and
    the worker's vLLM token counter grows after a completion through Nginx."""
    poll("a completion through the head's nginx", lambda: cluster.completion() is not None, 600,
         list(cluster.nodes.values()), interval=5)
    nodes = {name: f"{node.host.ip}:{node.env['RAY_METRICS_PORT']}" for name, node in cluster.nodes.items()}
    prom = Prometheus(tmp_path, ray_targets=",".join(nodes.values()), profiles=("head", "monitoring-head"),
                      prefix=cluster.hosts.head.prefix())
    try:
        prom.start(status_port=int(cluster.nodes["head"].env["NGINX_STATUS_PORT"]))
        prom.wait("both Ray nodes and Nginx up", lambda: prom.targets_up(ray_targets=2))
        query = "sum by (instance) (ray_vllm_generation_tokens_total)"

        def by_instance() -> dict[str, float]:
            return {r["metric"]["instance"]: float(r["value"][1]) for r in prom.api("query", query=query)["result"]}

        before = prom.wait("vLLM's token counter from the worker", by_instance)
        assert set(before) == {nodes["worker"]}, before  # the engine runs on the worker only
        reply = cluster.completion()
        assert reply is not None
        tokens = reply["usage"]["completion_tokens"]
        prom.wait(f"the worker's counter to grow by {tokens}",
                  lambda: by_instance().get(nodes["worker"], 0) >= before[nodes["worker"]] + tokens)
        assert prom.value('sum(nginx_connections_accepted{job="nginx"})') >= 1
    finally:
        prom.stop()


def test_per_node_settings_stay_on_their_node(cluster: Cluster) -> None:
    worker = cluster.nodes["worker"]
    assert worker.proc is not None
    engines = [pid for pid in session_processes(worker.proc.pid)
               if "EngineCore" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
               or "LLMServer" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    assert engines, "no engine process found in the worker's session"
    for pid in engines:
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in item)
        assert environ["VLLM_HOST_IP"] == cluster.hosts.worker.ip
        assert environ["NCCL_SOCKET_IFNAME"] == cluster.hosts.worker.ifname
        for name, value in SHARED_NCCL.items():
            assert environ[name] == value, name
    # vLLM will not copy the per-node values from the engine's node to others.
    config = Path(worker.env["VLLM_CONFIG_ROOT"]) / "ray_non_carry_over_env_vars.json"
    assert {"VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"} <= set(json.loads(config.read_text()))
    # Nothing travels in Serve's runtime_env: the deployment details (what
    # `serve status` and the dashboard show) carry no env_vars and no token.
    details = cluster.on_head("curl", "-sf", "-H", f"Authorization: Bearer {TOKEN}",
                              f"http://127.0.0.1:{cluster.dashboard_port}/api/serve/applications/")
    assert '"deployments"' in details
    assert TOKEN not in details
    for name in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "VLLM_HOST_IP", "NCCL_IB_TC", "HF_TOKEN"):
        assert name not in details, f"{name} appears in Serve's deployment details"


def test_vllm_reads_the_non_carry_over_file(cluster: Cluster) -> None:
    """The real vLLM module picks the list up (checked in a separate interpreter)."""
    env = {**os.environ, "VLLM_CONFIG_ROOT": cluster.nodes["worker"].env["VLLM_CONFIG_ROOT"]}
    out = subprocess.run([os.environ.get("PYTHON", "python"), "-c",
                          "from vllm.ray.ray_env import RAY_NON_CARRY_OVER_ENV_VARS as v; print(sorted(v))"],
                         env=env, text=True, capture_output=True, timeout=120, check=True)
    assert "NCCL_SOCKET_IFNAME" in out.stdout and "VLLM_HOST_IP" in out.stdout


def test_frozen_engine_on_the_worker_is_replaced(cluster: Cluster) -> None:
    """The hang watchdog across hosts: the replica on the worker node finds its
    engine frozen (SIGSTOP), kills it and is replaced; the head serves again."""
    worker = cluster.nodes["worker"]
    assert worker.proc is not None
    poll("a completion through the head's nginx", lambda: cluster.completion() is not None, 600,
         list(cluster.nodes.values()), interval=5)
    engines = [int(pid) for pid in session_processes(worker.proc.pid)
               if "EngineCore" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    assert engines, "no engine process found in the worker's session"
    for pid in engines:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        poll("serving to recover after the freeze", lambda: cluster.completion() is not None, 600,
             list(cluster.nodes.values()), interval=5)
        print(f"\nmulti-node hang: completions again {time.monotonic() - started:.0f}s after the freeze")
        assert all(process_gone(pid) for pid in engines), "the frozen engine was not killed"
        assert "watchdog: FIRED" in cluster.nodes["head"].log_path.read_text()
    finally:
        kill_if_stopped(engines)  # never resumed


def test_worker_restart_rejoins_and_serving_recovers(cluster: Cluster) -> None:
    worker = cluster.nodes["worker"]
    worker.stop()
    poll("the head to see the worker gone", lambda: cluster.alive_node_ips() == [cluster.hosts.head.ip], 120,
         [cluster.nodes["head"]], interval=3)
    worker.start()
    nodes = list(cluster.nodes.values())
    poll("the worker to rejoin", lambda: len(cluster.alive_node_ips()) == 2, 180, nodes, interval=3)
    poll("serving to recover", lambda: cluster.completion() is not None, 600, nodes, interval=5)


def test_worker_exits_nonzero_when_it_loses_the_head(cluster: Cluster) -> None:
    worker = cluster.nodes["worker"]
    assert worker.proc is not None
    cluster.nodes["head"].stop()
    try:
        code = worker.proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("worker kept running 180 s after losing the head:\n" + worker.log_tail())
    assert code != 0
    assert "lost the head" in worker.log_path.read_text()
