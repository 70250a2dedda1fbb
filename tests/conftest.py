"""Import paths for every tier: src/ (the code under test) and tests/ (the
``support`` package). Markers are declared in pytest.ini.

Tiers are folders, and a folder says what its tests cost:
  tests/unit/                  no model engine, no Docker engine (seconds)
  tests/integration/cluster/   two Ray nodes in network namespaces, also the
                               air-gapped start
  tests/integration/compose/   the Compose stack on the private Docker engine
  tests/integration/local/     one local stack (scripts/local-stack.sh)
Each stack is a fixture scoped to its folder: it starts when the folder's
first test needs it and stops when the folder is done, so at most one CPU
engine runs at a time and any file runs alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS.parent / "src"))
sys.path.insert(0, str(TESTS))
