"""src/'s imports point one way (issue 25): no cycle, the pure settings code
imports nothing of the project, and the tools never import the server's entry
point. Read from the source with ast (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

from support import REPO_ROOT

SRC = REPO_ROOT / "src"
MODULES = {path.stem: path for path in SRC.glob("*.py")}
# Pure: a mapping in, data out; imported by everything else.
PURE = ("settings",)
# Commands beside the server: they must not pull in deploy.py (Ray, vLLM).
TOOLS = ("doctor", "download_model", "healthcheck")


def imports(path: Path) -> set[str]:
    """The src modules PATH imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(MODULES) - {path.stem}


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_cycle() -> None:
    cycles = sorted(name for name in GRAPH if name in reachable(name))
    assert not cycles, {name: sorted(GRAPH[name]) for name in cycles}


def test_pure_settings_import_nothing_of_the_project() -> None:
    for name in PURE:
        assert GRAPH[name] == set(), f"{name} imports {sorted(GRAPH[name])}"


def test_tools_do_not_import_the_server() -> None:
    for name in TOOLS:
        if name in GRAPH:
            assert "deploy" not in reachable(name), f"{name} reaches deploy.py: {sorted(reachable(name))}"


def test_ray_node_exports_the_proxy_callback_deploy_py_sets() -> None:
    """The head's `ray start` (docker/ray-node.sh) must name the same proxy
    middlewares as deploy.py: Ray's proxy actor inherits the raylet's environment."""
    from proxy_middlewares import PROXY_CALLBACK, PROXY_CALLBACK_VAR

    script = (REPO_ROOT / "docker" / "ray-node.sh").read_text()
    assert f"export {PROXY_CALLBACK_VAR}={PROXY_CALLBACK}\n" in script
