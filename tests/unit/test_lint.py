"""hadolint, shellcheck and the lock check: real tools, real files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from support import REPO_ROOT, require_tool, run


def shell_scripts() -> list[Path]:
    """Every tracked or new shell script: *.sh, *.envsh, and files with a bash/sh shebang."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO_ROOT, text=True, capture_output=True, check=True).stdout.split()
    scripts = []
    for name in files:
        path = REPO_ROOT / name
        if not path.is_file():
            continue
        if path.suffix in {".sh", ".envsh"}:
            scripts.append(path)
            continue
        with path.open("rb") as handle:
            first = handle.readline()
        if first.startswith(b"#!") and (b"bash" in first or first.rstrip().endswith(b"/sh")):
            scripts.append(path)
    return scripts


DOCKERFILES = [REPO_ROOT / "docker" / "Dockerfile", REPO_ROOT / "docker" / "nginx" / "Dockerfile",
               *sorted((REPO_ROOT / "tools" / "standins").glob("*.Dockerfile"))]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_hadolint_passes(dockerfile: Path) -> None:
    out = run([require_tool("hadolint"), "--config", str(REPO_ROOT / ".hadolint.yaml"), str(dockerfile)])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_no_syntax_directive(dockerfile: Path) -> None:
    """`# syntax=` makes BuildKit fetch its frontend from Docker Hub: offline builds fail."""
    assert not re.search(r"^#\s*syntax\s*=", dockerfile.read_text(), re.M | re.I)


def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && echo hi\n")
    out = run([require_tool("hadolint"), "--config", str(REPO_ROOT / ".hadolint.yaml"), str(bad)])
    assert out.returncode != 0 and "DL3007" in out.stdout


def test_shellcheck_passes() -> None:
    scripts = shell_scripts()
    names = {p.relative_to(REPO_ROOT).as_posix() for p in scripts}
    assert {"scripts/lib.sh", "scripts/test.sh", ".ci/run"} <= names
    for script in scripts:
        shell = ["--shell=sh"] if script.suffix == ".envsh" else []
        out = run([require_tool("shellcheck"), "-x", *shell, str(script)], cwd=REPO_ROOT)
        assert out.returncode == 0, f"{script}:\n{out.stdout}{out.stderr}"


def test_scripts_are_strict() -> None:
    for script in shell_scripts():
        text = script.read_text()
        if script.suffix == ".envsh" or not text.startswith("#!"):
            continue  # sourced files (no #! line) inherit their caller's options
        if text.startswith("#!/bin/sh"):
            # POSIX sh (the Alpine nginx image's busybox, image entry points):
            # -E and pipefail are bash options.
            assert "\nset -eu\n" in text, f"{script} lacks set -eu"
            continue
        assert "set -Eeuo pipefail" in text, f"{script} lacks set -Eeuo pipefail"


def test_ci_runs_exactly_the_test_command() -> None:
    lines = [l for l in (REPO_ROOT / ".ci" / "run").read_text().splitlines() if l and not l.startswith("#")]
    assert lines[-1] == "exec scripts/test.sh"


def test_locks_are_up_to_date() -> None:
    """Recompiles requirements*.in (x86_64 and aarch64) and compares with the locks."""
    out = run(["bash", str(REPO_ROOT / "tools" / "lock.sh"), "--check"], cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_lint_passes_with_only_multinode_suppressions() -> None:
    out = run([require_tool("compose-lint"), "--fail-on", "high", "docker/docker-compose.yml"], cwd=REPO_ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr
    import yaml

    config = yaml.safe_load((REPO_ROOT / ".compose-lint.yml").read_text())
    multinode_services = {"ray-head", "ray-worker", "nginx-head", "prometheus-head", "nginx-exporter-head",
                          "grafana-head"}
    for rule, body in config["rules"].items():
        for service, reason in body["exclude_services"].items():
            assert service in multinode_services, f"{rule} suppressed for {service}, not a multi-node profile service"
            assert len(reason) > 40 and "TODO" not in reason, f"{rule}/{service} needs a real reason"


def test_compose_lint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  app:\n    image: alpine:3\n    privileged: true\n")
    out = run([require_tool("compose-lint"), "--fail-on", "high", str(bad)], cwd=tmp_path)
    assert out.returncode != 0
