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


def test_bad_settings_start_nothing(tmp_path: Path) -> None:
    """`up` waits for deploy.py's own check (no separate --dry-run first): on bad
    settings it shows deploy.py's problems, exits non-zero, and neither Ray nor
    Nginx is left running."""
    s = LocalStack(tmp_path / "stack", extra_env={"MAX_MODEL_LEN": "lots", "STREAM_BATCHING_INTERVAL_MS": "2000"})
    out = s.run("up", timeout=300)
    assert out.returncode != 0, out.stderr
    assert "deploy.py: configuration error, nothing was started" in out.stderr, out.stderr
    assert "MAX_MODEL_LEN" in out.stderr and "STREAM_BATCHING_INTERVAL_MS" in out.stderr, out.stderr
    assert "configuration is invalid (see above); nothing was started" in out.stderr, out.stderr
    assert "starting nginx" not in out.stderr, out.stderr
    assert s.session_pids() == {"serve": None, "nginx": None}
    assert not (s.stack_dir / "nginx").exists()
