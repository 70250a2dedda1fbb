"""No way around Nginx in the head/worker profiles (issue 24, requirement 6).

A third namespace host on the cluster's fabric, the "outsider", tries every
TCP port the head and the worker listen on at a fabric-reachable address
(read from /proc/net/tcp* in each host): a completion over HTTP, Ray's HTTP
routes (the dashboard API, Serve's), a gRPC call to each of Ray's services, and
a plain read. Each port must land in one of these classes, or the test fails:

- Nginx: 401 in OpenAI's shape without the key, a completion with it;
- Ray's HTTP services: 401 without the cluster token;
- Ray's gRPC services: UNAUTHENTICATED without the token, through with it
  (the control that shows the probe reaches the service);
- metrics or stats pages: readable, and each one is a page the doctor's
  `fabric-ports` warning names (docs/operations.md lists them with the
  firewall rule that closes them);
- vLLM's engine sockets on VLLM_HOST_IP (torch.distributed): silent to HTTP and
  to a plain read, owned by vLLM's worker, and named there too.

Nothing may return model output without the key, and a driver without the
token cannot join the cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import doctor
from support import REPO_ROOT
from support.cluster import API_KEY, MODEL, TOKEN, Cluster, Host, poll

pytestmark = [pytest.mark.multinode]

LISTEN = "0A"
# One real method of each of Ray's gRPC services (Ray 2.60): a port answers
# UNIMPLEMENTED for every method it does not serve, and a server checks the
# token only for a method it serves.
GRPC_METHODS = ["/ray.rpc.NodeInfoGcsService/GetAllNodeInfo", "/ray.rpc.NodeManagerService/GetNodeStats",
                "/ray.rpc.CoreWorkerService/NumPendingTasks", "/ray.rpc.ObjectManagerService/FreeObjects",
                "/ray.rpc.ObjectManagerService/Pull", "/ray.serve.ASGIService/HandleRequest",
                "/ray.rpc.RayletDriver/ClusterInfo", "/ray.rpc.ReporterService/HealthCheck"]
HTTP_PATHS = [["POST", "/v1/chat/completions"], ["GET", "/v1/models"], ["GET", "/api/version"],
              ["GET", "/api/jobs/"], ["GET", "/api/serve/applications/"], ["GET", "/-/routes"],
              ["GET", "/metrics"], ["GET", "/stats"]]
# Runs on the outsider: one JSON line of what every port answered.
SCAN = r'''
import concurrent.futures, http.client, json, socket, sys
import grpc
targets, model, key, token, paths, methods = json.loads(sys.argv[1])
body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})

def ask(host, port, method, path, auth=None):
    c = http.client.HTTPConnection(host, port, timeout=3)
    try:
        headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
        c.request(method, path, body=body if method == "POST" else None, headers=headers)
        r = c.getresponse()
        return [r.status, r.read(3000).decode("latin-1")]
    finally:
        c.close()

def grpc_call(host, port, method, metadata):
    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        channel.unary_unary(method)(b"", timeout=3, metadata=metadata)
        return "OK"
    except grpc.RpcError as err:
        return err.code().name
    finally:
        channel.close()

def probe(target):
    host, port = target
    found = {"host": host, "port": port, "http": {}, "grpc": {}}
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(0.5)
            try:
                found["banner"] = s.recv(64).hex()
            except OSError:
                found["banner"] = ""
    except OSError as err:
        found["connect"] = repr(err)
        return found
    # An HTTP/2 server's SETTINGS frame first: gRPC.
    found["h2"] = found["banner"].startswith("000018040000")
    if found["h2"]:
        for method in methods:
            plain = grpc_call(host, port, method, None)
            if plain != "UNIMPLEMENTED":
                found["grpc"][method] = [plain, grpc_call(host, port, method, [("authorization", "Bearer " + token)])]
    else:
        for method, path in paths:
            try:
                found["http"][path] = ask(host, port, method, path)
            except (OSError, http.client.HTTPException) as err:  # silent, reset or not HTTP: one try is enough
                found["http"][path] = [0, repr(err)[:200]]
                break
        if found["http"].get("/v1/chat/completions", [0])[0] == 401:
            found["with_key"] = ask(host, port, "POST", "/v1/chat/completions", "Bearer " + key)
    return found

# Silent ports cost a timeout each: several at once.
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    results = list(pool.map(probe, targets))
print(json.dumps(results))
'''


def listening(host: Host) -> dict[int, str]:
    """TCP ports HOST listens on at an address another host can reach (not
    loopback), with the name of the process that owns each."""
    owners = socket_owners()
    ports: dict[int, str] = {}
    for table in ("tcp", "tcp6"):
        out = subprocess.run([*host.prefix(), "cat", f"/proc/net/{table}"], text=True,
                             capture_output=True, check=True).stdout
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            address, port = fields[1].rsplit(":", 1)
            if address.endswith("7F") or address == "00000000000000000000000001000000":
                continue  # 127.x, ::ffff:127.x (little-endian) or ::1: the host only
            ports[int(port, 16)] = owners.get(fields[9], "?")
    return ports


def socket_owners() -> dict[str, str]:
    """Socket inode -> the owning process's name, for every process."""
    owners: dict[str, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            name = (proc / "comm").read_text().strip()
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    owners[link[8:-1]] = name
        except OSError:
            continue
    return owners


def test_the_outsider_gets_nothing_without_credentials(cluster: Cluster) -> None:
    if cluster.hosts.outsider is None:
        pytest.skip(f"no third host in loopback mode: {cluster.hosts.why_fallback}")
    # Serving (a test before may have restarted a node), so every port is up.
    poll("a completion through the head's Nginx", lambda: cluster.completion() is not None, 600,
         list(cluster.nodes.values()))
    owners = {(host.ip, port): owner for host in (cluster.hosts.head, cluster.hosts.worker)
              for port, owner in listening(host).items()}
    assert (cluster.hosts.head.ip, cluster.http_port) in owners, f"Nginx is not on the fabric: {owners}"
    scan = json.dumps([[list(target) for target in sorted(owners)], MODEL, API_KEY, TOKEN, HTTP_PATHS, GRPC_METHODS])
    started = time.monotonic()
    out = subprocess.run([*cluster.hosts.outsider.prefix(), sys.executable, "-c", SCAN, scan], text=True,
                         capture_output=True, timeout=600, check=False,
                         env={"PATH": os.environ["PATH"], "NO_PROXY": "*"})
    print(f"\nscan of {len(owners)} ports: {time.monotonic() - started:.1f} s")
    assert out.returncode == 0, out.stderr[-3000:]
    # The pages the doctor's fabric-ports warning names (and the guide lists).
    metrics_port = int(cluster.nodes["head"].env["RAY_METRICS_PORT"])
    known_pages = {metrics_port, *doctor.HEAD_ONLY_PAGES}
    guide = (REPO_ROOT / "docs" / "operations.md").read_text()
    assert "`RAY_METRICS_PORT`" in guide and "vLLM's engine sockets" in guide
    table, problems = [], []
    for found in json.loads(out.stdout.strip().splitlines()[-1]):
        where, owner = f"{found['host']}:{found['port']}", owners[(found["host"], found["port"])]
        verdict = classify(found, cluster)
        table.append(f"{where:<22} {owner:<16} {verdict}")
        if verdict.startswith("OPEN"):
            problems.append(f"{where} ({owner}): {verdict}")
        elif verdict.startswith("readable") and found["port"] not in known_pages:
            problems.append(f"{where} ({owner}) is {verdict}, and neither the doctor nor the guide names it")
        elif verdict.startswith("silent") and not owner.startswith("VLLM"):
            problems.append(f"{where} ({owner}) is {verdict} and not one of vLLM's engine sockets")
    print("\nwhat the outsider reaches (port, owner, verdict):\n" + "\n".join(table))
    assert not problems, "\n".join(problems)
    # Ray itself: no driver joins without the cluster token.
    join = (f"import ray\ntry:\n    ray.init(address='{cluster.hosts.head.ip}:{cluster.gcs_port}')\n"
            "    print('JOINED')\nexcept Exception as err:\n    print('REFUSED', type(err).__name__, err)\n")
    joined = subprocess.run([*cluster.hosts.outsider.prefix(), sys.executable, "-c", join], text=True,
                            capture_output=True, timeout=180, check=False,
                            env={"PATH": os.environ["PATH"], "RAY_USAGE_STATS_ENABLED": "0"})
    said = joined.stdout + joined.stderr
    assert "JOINED" not in joined.stdout, "a driver without the token joined the cluster"
    assert "REFUSED" in joined.stdout and ("token" in said.lower() or "auth" in said.lower()), said[-2000:]


def classify(found: dict, cluster: Cluster) -> str:
    """What one port gave the outsider; a verdict that starts with OPEN fails."""
    if "connect" in found:
        return f"refused ({found['connect'][:60]})"
    answers, calls = found["http"], found["grpc"]
    for path, (status, text) in answers.items():
        if '"choices"' in text:
            return f"OPEN: {path} returned model output without a key"
    if calls:
        for method, (plain, with_token) in calls.items():
            if plain != "UNAUTHENTICATED":
                return f"OPEN: gRPC {method} answered {plain} without the cluster token"
            if with_token == "UNAUTHENTICATED":
                return f"OPEN?: gRPC {method} refused the cluster token too (the probe proves nothing)"
        return "gRPC, token required (" + ", ".join(m.split("/")[1] for m in calls) + ")"
    if found["h2"]:
        return "OPEN?: a gRPC server with none of Ray's services this probe knows"
    completion = answers.get("/v1/chat/completions", [0, ""])
    if completion[0] == 401 and found["port"] == cluster.http_port:
        ok = '"error"' in completion[1] and '"choices"' in found.get("with_key", [0, ""])[1]
        return "Nginx: 401 without the key, a completion with it" if ok else f"OPEN?: Nginx answered {found}"
    if all(status == 401 for status, _ in answers.values()):
        return "HTTP, token required (401)"
    for path, (status, text) in answers.items():
        if path.startswith(("/api/", "/-/")) and status == 200 and "# HELP" not in text:
            return f"OPEN: {path} answered without the cluster token: {text[:120]}"
    if any(status == 200 for status, _ in answers.values()):
        return "readable: " + ", ".join(p for p, (s, _) in answers.items() if s == 200 and p in ("/metrics", "/stats"))
    if answers and all(status == 0 and "timed out" in text for status, text in answers.values()) \
            and not found["banner"]:
        return "silent (no answer to HTTP or to a plain read)"
    return f"OPEN?: unclassified {json.dumps(answers)[:300]}"
