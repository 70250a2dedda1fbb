"""Run Compose v2's own `docker compose config` on a scratch copy of the repo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from support import REPO_ROOT, clean_env, require_tool


class ComposeProject:
    """A copy of the files Compose reads (.env, .secrets*, docker/), editable per test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(REPO_ROOT / "docker", root / "docker")
        shutil.copy(REPO_ROOT / ".env", root / ".env")
        shutil.copy(REPO_ROOT / ".secrets.example", root / ".secrets.example")

    def set_env(self, **values: str) -> None:
        """Rewrite variables in the copy's .env (as a user would edit it)."""
        lines = (self.root / ".env").read_text().splitlines()
        for key, value in values.items():
            lines = [f"{key}={value}" if line.startswith(f"{key}=") else line for line in lines]
        (self.root / ".env").write_text("\n".join(lines) + "\n")

    def drop_env(self, key: str) -> None:
        lines = (self.root / ".env").read_text().splitlines()
        (self.root / ".env").write_text("\n".join(l for l in lines if not l.startswith(f"{key}=")) + "\n")

    def compose(self, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
        require_tool("docker")
        return subprocess.run(["docker", "compose", *args], cwd=self.root, env=clean_env(**environ),
                              text=True, capture_output=True, timeout=60, check=False)

    def config(self, *args: str, **environ: str) -> dict[str, Any]:
        out = self.compose(*args, "config", "--format", "json", **environ)
        assert out.returncode == 0, f"docker compose config failed:\n{out.stderr}"
        return json.loads(out.stdout)
