"""Two Ray "hosts" on one machine for the multi-node test.

Preferred: two network namespaces joined by a veth pair, each with its own IP
(198.18.0.0/15 is reserved for benchmarking, so it never clashes with a real
network). Fallback when namespaces are not permitted: two loopback addresses
(127.0.0.2 and .3; Ray swaps 127.0.0.1 for the machine's own address).
Nodes are started by docker/ray-node.sh, the entry point of the Compose
head/worker profiles.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dotenv import dotenv_values

from support import REPO_ROOT, free_port, require_tool, session_processes
from support.local_stack import FAST_RESTARTS

NODE_SCRIPT = REPO_ROOT / "docker" / "ray-node.sh"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], text=True, capture_output=True, check=False)


@dataclass
class Host:
    name: str
    ip: str
    ifname: str
    netns: str | None

    def prefix(self) -> list[str]:
        """Command prefix that runs a program on this host."""
        return ["ip", "netns", "exec", self.netns] if self.netns else []


@dataclass
class TwoHosts:
    """Head and worker, and in namespace mode a third host on the same fabric
    (the "outsider": a machine on the cluster's network that is not a node)."""

    head: Host
    worker: Host
    mode: str  # "netns" or "loopback"
    why_fallback: str = ""
    outsider: Host | None = None
    fabric_ns: str | None = None

    @classmethod
    def create(cls, tag: str) -> "TwoHosts":
        reason = cls._netns_unavailable()
        if reason:
            # 127.0.0.1 itself is replaced by the machine's address in Ray: use .2 and .3.
            return cls(Host("head", "127.0.0.2", "lo", None), Host("worker", "127.0.0.3", "lo", None),
                       "loopback", reason)
        # One bridge (in a namespace of its own, so nothing touches this
        # machine's network) with a veth pair to each host: one L2 segment.
        fabric = f"rlf-{tag}"
        hosts = cls(Host("head", "198.18.0.1", f"vrh{tag}"[:15], f"rlh-{tag}"),
                    Host("worker", "198.18.0.2", f"vrw{tag}"[:15], f"rlw-{tag}"), "netns",
                    outsider=Host("outsider", "198.18.0.3", f"vro{tag}"[:15], f"rlo-{tag}"), fabric_ns=fabric)
        steps = [["netns", "add", fabric], ["-n", fabric, "link", "add", "br0", "type", "bridge"],
                 ["-n", fabric, "link", "set", "br0", "up"]]
        for host in hosts.all():
            assert host.netns is not None
            peer = f"p{host.ifname}"[:15]
            steps += [
                ["netns", "add", host.netns],
                ["link", "add", host.ifname, "type", "veth", "peer", "name", peer],
                ["link", "set", host.ifname, "netns", host.netns], ["link", "set", peer, "netns", fabric],
                ["-n", fabric, "link", "set", peer, "master", "br0"], ["-n", fabric, "link", "set", peer, "up"],
                ["-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", host.ifname],
                ["-n", host.netns, "link", "set", host.ifname, "up"], ["-n", host.netns, "link", "set", "lo", "up"],
            ]
        for step in steps:
            out = _ip(*step)
            if out.returncode != 0:
                hosts.destroy()
                raise RuntimeError(f"ip {' '.join(step)} failed: {out.stderr}")
        return hosts

    def all(self) -> list[Host]:
        return [h for h in (self.head, self.worker, self.outsider) if h is not None]

    @staticmethod
    def _netns_unavailable() -> str:
        if os.environ.get("RAY_LLM_TEST_LOOPBACK") == "1":
            return "RAY_LLM_TEST_LOOPBACK=1 asked for the loopback fallback"
        if shutil.which("ip") is None:
            return "iproute2 is not installed"
        probe = f"rlprobe-{os.getpid()}"
        out = _ip("netns", "add", probe)
        if out.returncode != 0:
            return f"'ip netns add' is not permitted here: {out.stderr.strip()}"
        _ip("netns", "del", probe)
        return ""

    def destroy(self) -> None:
        for netns in [h.netns for h in self.all()] + [self.fabric_ns]:
            if netns:
                _ip("netns", "del", netns)  # removes its veth ends (and the bridge) with it


@dataclass
class Node:
    """One ray-node.sh process (its own session, so it can be stopped whole)."""

    host: Host
    role: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([*self.host.prefix(), "bash", str(NODE_SCRIPT), self.role], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60) -> int | None:
        """Stop the node as `docker stop` stops its container: SIGTERM to the
        entry point's process group, up to TIMEOUT s for the entry point to
        exit, then SIGKILL to whatever is left in its session (a container's
        processes end with its PID 1). Waiting for the whole session instead
        cost a minute per stop: Ray's HAProxy and a headless worker's agents
        sit in process groups of their own and outlive the entry point."""
        if self.proc is None:
            return None
        sid = self.proc.pid
        if self.proc.poll() is None:
            try:
                os.killpg(sid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        for pid in session_processes(sid):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while session_processes(sid) and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"----- {self.role} log {self.log_path} -----\n" + "\n".join(tail)


TOKEN = "multinode-test-token-0123456789abcdef"
# The head's Nginx takes this key (on the fabric, as nginx-head does).
API_KEY = "multinode-test-api-key-0123456789abcdef"
MODEL = "tiny-llama"
SHARED_NCCL = {"NCCL_IB_TC": "106", "NCCL_IB_TIMEOUT": "22", "NCCL_DEBUG": "WARN"}


def poll(what: str, check: Callable[[], bool], timeout: float, nodes: list[Node], interval: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for node in nodes:
            assert node.alive(), f"{node.role} exited while waiting for {what}:\n{node.log_tail()}"
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


class Cluster:
    """Head and worker (ray-node.sh) on two test hosts, Nginx on the head.
    MODEL_SOURCE and EXTRA_ENV (the air-gapped settings) reach both nodes."""

    def __init__(self, root: Path, model_source: Path, extra_env: dict[str, str] | None = None) -> None:
        require_tool("nginx")
        self.root = root
        self.audit_log = Path((extra_env or {}).get("NET_AUDIT_LOG", root / "net-audit.log"))
        self.hosts = TwoHosts.create(str(os.getpid() % 100000))
        loopback = self.hosts.mode == "loopback"
        self.gcs_port = free_port() if loopback else 6379
        self.api_port = free_port() if loopback else 8000
        self.dashboard_port = free_port() if loopback else 8265
        self.http_port = free_port() if loopback else 8080
        base = {k: v or "" for k, v in dotenv_values(REPO_ROOT / ".env").items()}
        base.update({k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")})
        base.update(
            DEVICE="cpu", MODEL_ID=MODEL, MODEL_SOURCE=str(model_source), SERVED_MODEL_NAME=MODEL, HF_HUB_OFFLINE="1",
            MAX_MODEL_LEN="2048", MAX_NUM_SEQS="16", NUM_NODES="2", NODE_WAIT_TIMEOUT="300",
            RAY_AUTH_TOKEN=TOKEN, RAY_HEAD_HOST=self.hosts.head.ip, RAY_HEAD_PORT=str(self.gcs_port),
            RAY_API_PORT=str(self.api_port), RAY_DASHBOARD_PORT=str(self.dashboard_port),
            # As the head profile does (RAY_PUBLISH_ADDRESS): Serve's HTTP
            # port on loopback, Nginx the only door to the fabric.
            RAY_API_HOST="127.0.0.1", NGINX_HTTP_PORT=str(self.http_port),
            NGINX_HTTPS_PORT=str(free_port()), NGINX_STATUS_PORT=str(free_port() if loopback else 8081),
            NGINX_TUNNEL_PORT=str(free_port() if loopback else 8082),
            RAY_HEAD_WAIT_TIMEOUT="120", **SHARED_NCCL, **FAST_RESTARTS,
        )
        base.update(extra_env or {})
        self.nodes: dict[str, Node] = {}
        for host, extra in ((self.hosts.head, {"RAY_START_ARGS": "--num-cpus=0"}), (self.hosts.worker, {})):
            env = {**base, **extra, "VLLM_HOST_IP": host.ip,
                   "RAY_METRICS_PORT": str(free_port() if loopback else 8090), "NCCL_SOCKET_IFNAME": host.ifname,
                   "GLOO_SOCKET_IFNAME": host.ifname, "VLLM_CONFIG_ROOT": str(root / host.name / "vllm-config")}
            self.nodes[host.name] = Node(host, host.name, env, root / f"{host.name}.log")
        self.nginx: subprocess.Popen[bytes] | None = None

    # -- helpers running on the head host -------------------------------------------------
    def on_head(self, *cmd: str, timeout: float = 60, env: dict[str, str] | None = None) -> str:
        out = subprocess.run([*self.hosts.head.prefix(), *cmd], text=True, capture_output=True, timeout=timeout,
                             env=env or self.nodes["head"].env, check=False)
        assert out.returncode == 0, f"{cmd} failed: {out.stderr[-2000:]}"
        return out.stdout

    def ray_probe(self, code: str) -> object:
        script = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False)\n%s\n"
                  % (f"{self.hosts.head.ip}:{self.gcs_port}", code))
        env = {**self.nodes["head"].env, "RAY_AUTH_MODE": "token"}
        return json.loads(self.on_head(os.environ.get("PYTHON", "python"), "-c", script, timeout=120, env=env)
                          .strip().splitlines()[-1])

    def alive_node_ips(self) -> list[str]:
        return sorted(self.ray_probe("print(json.dumps([n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']]))"))

    def completion(self) -> dict | None:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        out = subprocess.run([*self.hosts.head.prefix(), "curl", "-s", "--max-time", "30", "-H",
                              "Content-Type: application/json", "-H", f"Authorization: Bearer {API_KEY}", "-d", body,
                              f"http://127.0.0.1:{self.http_port}/v1/chat/completions"],
                             text=True, capture_output=True, check=False)
        try:
            reply = json.loads(out.stdout)
        except json.JSONDecodeError:
            return None
        return reply if reply.get("choices") else None

    def start_nginx(self) -> None:
        # On every address of the head host, with a key, as nginx-head.
        env = {**self.nodes["head"].env, "OPENAI_API_KEY": API_KEY, "NGINX_UPSTREAM_HOST": "127.0.0.1",
               "NGINX_BIND_ADDRESS": "0.0.0.0", "NGINX_CERTS_DIR": str(self.root / "no-certs")}
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "render-nginx.sh"), str(self.root / "nginx")],
                       env=env, check=True, capture_output=True)
        (self.root / "nginx-prefix").mkdir(exist_ok=True)
        log = (self.root / "nginx.log").open("ab")
        self.nginx = subprocess.Popen([*self.hosts.head.prefix(), "nginx", "-p", f"{self.root}/nginx-prefix/", "-e",
                                       "stderr", "-c", str(self.root / "nginx" / "nginx.conf"), "-g", "daemon off;"],
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def stop_all(self) -> None:
        """Nginx and both nodes stopped; the test hosts stay."""
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()
            self.nginx.wait(timeout=20)
        for node in self.nodes.values():
            node.stop()

    def teardown(self) -> None:
        self.stop_all()
        self.hosts.destroy()

    def logs(self) -> str:
        return "\n".join(node.log_tail(80) for node in self.nodes.values())
