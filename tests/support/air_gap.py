"""The air-gapped workflow's pieces: weights fetched ahead of time with
scripts/download-model.sh --dest from a stand-in Hub on loopback
(support/fake_hub.py), made read-only like Compose's mount; the settings of
an offline start; and the network audit (tests/netaudit/sitecustomize.py),
which every Python process of a stack runs and which logs each connection
attempt and name lookup that is not loopback."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from support import REPO_ROOT, TINY_MODEL_DIR, clean_env, make_tiny_model, run
from support.fake_hub import FakeHub

REPO = "local-test/tiny-llama"
NETAUDIT_DIR = REPO_ROOT / "tests" / "netaudit"
# Somewhere inside the test range that nothing in an air-gapped host can reach.
UNREACHABLE_HUB = "http://198.18.255.254:9"


def download_read_only(dest: Path, work: Path) -> Path:
    """REPO into DEST with download-model.sh from a Hub on loopback, then read-only."""
    make_tiny_model()
    hub = FakeHub({REPO: TINY_MODEL_DIR})
    hub.start()
    try:
        fetched = run(["bash", str(REPO_ROOT / "scripts" / "download-model.sh"), "--model", REPO, "--dest", str(dest)],
                      env=clean_env(HF_ENDPOINT=hub.url, HF_HOME=str(work / "hf"), HF_HUB_DISABLE_PROGRESS_BARS="1"),
                      timeout=180)
    finally:
        hub.stop()
    assert fetched.returncode == 0, fetched.stderr
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return dest


def offline_env(model_source: Path, work: Path, audit_log: Path) -> dict[str, str]:
    """An offline start of MODEL_SOURCE, every Python process audited into AUDIT_LOG."""
    return {"MODEL_ID": REPO, "MODEL_SOURCE": str(model_source), "SERVED_MODEL_NAME": "tiny-llama",
            "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf-empty"), "HF_ENDPOINT": UNREACHABLE_HUB,
            "PYTHONPATH": str(NETAUDIT_DIR), "NET_AUDIT_LOG": str(audit_log)}


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


def audited_attempts(audit_log: Path, own_hosts: tuple[str, ...] = ()) -> list[str]:
    """Logged attempts to reach anything but loopback, OWN_HOSTS (the cluster's
    other nodes) and the known upstream probes."""
    logged = audit_log.read_text().splitlines() if audit_log.exists() else []
    own = tuple(f"{kind} ('{host}'," for host in own_hosts for kind in ("connect", "udp-route-lookup")) + \
        tuple(f"getaddrinfo '{host}'" for host in own_hosts)
    return [line for line in logged
            if not known_upstream_probe(line) and not line.split(": ", 1)[1].startswith(own)]


def audit_ran_in(audit_log: Path) -> str:
    """The processes the audit loaded in (one line each)."""
    return Path(f"{audit_log}.loaded").read_text()
