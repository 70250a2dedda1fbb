#!/usr/bin/env bash
# Read-only preflight for this node, before `docker compose up` (src/doctor.py
# has the checks). Prints pass/warn/fail with a fix for each; exits 1 on any
# fail. Options: --profile single|cpu|head|worker, --json.
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# A Python with python-dotenv (what deploy.py reads .env with): the test
# command's venv, else the host's python3.
doctor_python() {
  local candidate
  for candidate in "$RUNTIME_DIR/venv/bin/python" python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import dotenv' 2>/dev/null; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  die "doctor needs python3 with python-dotenv: apt install python3-dotenv (or pip install python-dotenv)"
}

main() {
  local python
  python=$(doctor_python)
  exec "$python" "$REPO_ROOT/src/doctor.py" "$@"
}

main "$@"
