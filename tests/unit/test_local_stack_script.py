"""scripts/local-stack.sh without an engine."""

from __future__ import annotations

from pathlib import Path

from support.local_stack import LocalStack


def test_down_leaves_nothing(tmp_path: Path) -> None:
    """`down` on a stack that is not running is harmless and says so."""
    s = LocalStack(tmp_path)
    out = s.down()
    assert out.returncode == 0, out.stderr
