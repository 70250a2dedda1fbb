"""scripts/local-stack.sh without an engine."""

from __future__ import annotations

from pathlib import Path

from support.local_stack import LocalStack


def test_down_leaves_nothing(tmp_path: Path) -> None:
    """`down` on a stack that is not running is harmless and says so."""
    s = LocalStack(tmp_path)
    out = s.down()
    assert out.returncode == 0, out.stderr


def test_down_reads_the_grace_period_with_the_settings_parser(tmp_path: Path) -> None:
    """One duration syntax: local-stack.sh asks src/settings.py for the seconds."""
    s = LocalStack(tmp_path, extra_env={"SERVE_STOP_GRACE_PERIOD": "1m30"})
    out = s.down()
    assert out.returncode == 0, out.stderr
    s.extra_env["SERVE_STOP_GRACE_PERIOD"] = "90 seconds"
    out = s.down()
    assert out.returncode != 0 and "SERVE_STOP_GRACE_PERIOD=90 seconds is not a duration" in out.stderr, out.stderr
