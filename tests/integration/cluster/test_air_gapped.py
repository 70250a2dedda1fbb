"""The air-gapped workflow end to end, on the folder's cluster: the weights
were fetched ahead of time with scripts/download-model.sh --dest from a
stand-in Hub on loopback (tests/support/fake_hub.py) and made read-only like
Compose's mount; both nodes start with HF_HUB_OFFLINE=1 and an unreachable
HF_ENDPOINT, inside network namespaces that reach nothing but each other; the
openai client answers through the head's Nginx there. Every Python process of
both nodes runs tests/netaudit/sitecustomize.py, which logs each connection
attempt and name lookup that is not loopback; the test fails on any that does
not go to the other node (UDP "connects", which send nothing, are only route
lookups; vLLM's to 8.8.8.8 is allowed). It found Ray's usage report probing
cloud metadata addresses, now off by default (RAY_USAGE_STATS_ENABLED=0).
Native code cannot reach anything either: the namespaces have no route out.
"""

from __future__ import annotations

import subprocess

import pytest

from support import REPO_ROOT, netns_missing
from support.air_gap import audit_ran_in, audited_attempts
from support.cluster import API_KEY, MODEL, Cluster, poll

pytestmark = [pytest.mark.e2e, pytest.mark.multinode]

PYTHON = str(REPO_ROOT / ".runtime" / "venv" / "bin" / "python")


def test_air_gapped_start_makes_no_network_call(cluster: Cluster) -> None:
    missing = netns_missing() or (cluster.hosts.mode != "netns" and cluster.hosts.why_fallback)
    if missing:
        pytest.fail(f"the air-gapped start needs network namespaces: {missing} (scripts/test.sh installs iproute2)")
    poll("a completion through the head's nginx", lambda: cluster.completion() is not None, 600,
         list(cluster.nodes.values()), interval=5)
    # The openai client, on the head host, through Nginx.
    client = (f"import openai; c = openai.OpenAI(base_url='http://127.0.0.1:{cluster.http_port}/v1', api_key='{API_KEY}'); "
              f"r = c.chat.completions.create(model='{MODEL}', max_tokens=4, "
              "messages=[{'role': 'user', 'content': 'hi'}]); print(r.usage.completion_tokens)")
    asked = subprocess.run([*cluster.hosts.head.prefix(), PYTHON, "-c", client], text=True, capture_output=True,
                           timeout=120, check=False, env={"PATH": cluster.nodes["head"].env["PATH"], "NO_PROXY": "*"})
    assert asked.returncode == 0 and asked.stdout.strip() == "4", asked.stderr
    # From this machine's own namespace nothing answers: the stack really is in there.
    assert subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{cluster.http_port}"],
                          capture_output=True, timeout=10).returncode != 0
    own = (cluster.hosts.head.ip, cluster.hosts.worker.ip)
    attempts = audited_attempts(cluster.audit_log, own_hosts=own)
    assert attempts == [], "network calls during an offline start:\n" + "\n".join(attempts)
    # The audit really ran in the stack's processes: deploy.py, Ray's workers, vLLM's engine.
    loaded = audit_ran_in(cluster.audit_log)
    for process in ("deploy.py", "default_worker.py", "multiprocessing"):
        assert process in loaded, f"the network audit did not run in {process}:\n{loaded[-2000:]}"
