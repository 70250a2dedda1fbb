"""The two-node cluster shared by every test in this folder: ray-node.sh head
and worker on two test hosts (network namespaces joined only to each other by
a veth pair), Nginx on the head. It is also the air-gapped start: the weights
come from download-model.sh --dest (read-only), HF_HUB_OFFLINE=1, and every
Python process runs the network audit (tests/integration/cluster/test_air_gapped.py).

Started by the folder's first test, stopped after its last. test_multinode.py's
last test takes the head away; a test that finds a node gone starts the cluster
again, so nothing depends on the order of files."""

from __future__ import annotations

from typing import Iterator

import pytest

from support import REPO_ROOT
from support.air_gap import download_read_only, offline_env
from support.cluster import Cluster


def start(c: Cluster) -> None:
    c.nodes["head"].start()
    c.nodes["worker"].start()
    c.start_nginx()


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    models = download_read_only(root / "models" / "tiny", root)
    c = Cluster(root, model_source=models, extra_env=offline_env(models, root, root / "net-audit.log"))
    print(f"\nmulti-node test mode: {c.hosts.mode} {c.hosts.why_fallback}")
    (REPO_ROOT / ".runtime").mkdir(exist_ok=True)
    (REPO_ROOT / ".runtime" / "multinode-mode.txt").write_text(f"{c.hosts.mode} {c.hosts.why_fallback}\n")
    failed_before = request.session.testsfailed
    try:
        start(c)
        yield c
    finally:
        if request.session.testsfailed > failed_before:
            print("\n" + c.logs())
        c.teardown()


@pytest.fixture(autouse=True)
def cluster_is_up(request: pytest.FixtureRequest) -> None:
    """Both nodes running before any test that uses the cluster, if a test stopped one."""
    if "cluster" not in request.fixturenames:
        return
    c: Cluster = request.getfixturevalue("cluster")
    if not all(node.alive() for node in c.nodes.values()):
        c.stop_all()
        start(c)
