#!/usr/bin/env python3
"""Write Ray's own Grafana dashboards for Serve and Serve LLM into the repo.

The dashboards under docker/monitoring/grafana/dashboards/ are the ones the
pinned Ray generates (ray.dashboard.modules.metrics.grafana_dashboard_factory,
the code Ray's dashboard runs at start), not hand-drawn copies. Grafana
(Compose profile monitoring) provisions them from there. Run with the test
command's venv after a Ray upgrade:

    .runtime/venv/bin/python tools/make-dashboards.py          # rewrite
    .runtime/venv/bin/python tools/make-dashboards.py --check  # exit 1 when stale

tests/unit/test_monitoring.py runs --check, so a Ray upgrade without a refresh fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = REPO_ROOT / "docker" / "monitoring" / "grafana" / "dashboards"
# File name -> Ray's generator (by name, resolved at run time: no import of Ray
# when this module is imported).
DASHBOARDS: dict[str, str] = {
    "serve_grafana_dashboard.json": "generate_serve_grafana_dashboard",
    "serve_deployment_grafana_dashboard.json": "generate_serve_deployment_grafana_dashboard",
    "serve_llm_grafana_dashboard.json": "generate_serve_llm_grafana_dashboard",
}


def generate() -> dict[str, str]:
    """File name -> dashboard JSON text, from the installed Ray."""
    from ray.dashboard.modules.metrics import grafana_dashboard_factory as factory

    out: dict[str, str] = {}
    for name, function in DASHBOARDS.items():
        make: Callable[[], tuple[str, str]] = getattr(factory, function)
        content, _uid = make()
        out[name] = content.rstrip("\n") + "\n"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when a file differs")
    parser.add_argument("--dir", type=Path, default=DASHBOARDS_DIR, help="output folder")
    args = parser.parse_args(argv)
    stale = []
    for name, content in generate().items():
        path = args.dir / name
        current = path.read_text() if path.exists() else None
        if current == content:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    if args.check and stale:
        print("stale (regenerate with tools/make-dashboards.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    print(("rewrote " if stale else "up to date: ") + ", ".join(stale or DASHBOARDS), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
