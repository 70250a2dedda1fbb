"""Two Ray "hosts" on one machine for the multi-node test.

Preferred: two network namespaces joined by a veth pair, each with its own IP
(198.18.0.0/15 is reserved for benchmarking, so it never clashes with a real
network). Fallback when namespaces are not permitted: two loopback addresses
(127.0.0.2 and .3; Ray swaps 127.0.0.1 for the machine's own address).
Nodes are started by scripts/ray-node.sh, the entry point of the Compose
head/worker profiles.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import REPO_ROOT, session_processes

NODE_SCRIPT = REPO_ROOT / "scripts" / "ray-node.sh"


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
    head: Host
    worker: Host
    mode: str  # "netns" or "loopback"
    why_fallback: str = ""

    @classmethod
    def create(cls, tag: str) -> "TwoHosts":
        reason = cls._netns_unavailable()
        if reason:
            # 127.0.0.1 itself is replaced by the machine's address in Ray: use .2 and .3.
            return cls(Host("head", "127.0.0.2", "lo", None), Host("worker", "127.0.0.3", "lo", None),
                       "loopback", reason)
        head_ns, worker_ns = f"rlh-{tag}", f"rlw-{tag}"
        head_if, worker_if = f"vrh{tag}"[:15], f"vrw{tag}"[:15]
        steps = [
            ["netns", "add", head_ns], ["netns", "add", worker_ns],
            ["link", "add", head_if, "type", "veth", "peer", "name", worker_if],
            ["link", "set", head_if, "netns", head_ns], ["link", "set", worker_if, "netns", worker_ns],
            ["-n", head_ns, "addr", "add", "198.18.0.1/24", "dev", head_if],
            ["-n", worker_ns, "addr", "add", "198.18.0.2/24", "dev", worker_if],
            ["-n", head_ns, "link", "set", head_if, "up"], ["-n", worker_ns, "link", "set", worker_if, "up"],
            ["-n", head_ns, "link", "set", "lo", "up"], ["-n", worker_ns, "link", "set", "lo", "up"],
        ]
        hosts = cls(Host("head", "198.18.0.1", head_if, head_ns), Host("worker", "198.18.0.2", worker_if, worker_ns),
                    "netns")
        for step in steps:
            out = _ip(*step)
            if out.returncode != 0:
                hosts.destroy()
                raise RuntimeError(f"ip {' '.join(step)} failed: {out.stderr}")
        return hosts

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
        for host in (self.head, self.worker):
            if host.netns:
                _ip("netns", "del", host.netns)  # removes the veth pair with it


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
        """SIGTERM the node's whole session, then SIGKILL leftovers."""
        if self.proc is None:
            return None
        sid = self.proc.pid
        try:
            os.killpg(sid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while session_processes(sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in session_processes(sid):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"----- {self.role} log {self.log_path} -----\n" + "\n".join(tail)

