#!/usr/bin/env bash
# Read-only preflight for this node, before `docker compose up` (src/doctor.py
# has the checks). Prints pass/warn/fail with a fix for each; exits 1 on any
# fail. Options: --profile single|cpu|head|worker, --json.
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  local python
  # python-dotenv: what deploy.py reads .env with; pydantic 2 (pydantic_core):
  # what settings.py validates with.
  python=$(python_with dotenv pydantic_core) ||
    die "doctor needs python3 with python-dotenv and pydantic 2: apt install python3-dotenv python3-pydantic" \
      "where the distribution's pydantic is 2.x; else in a venv: python3 -m venv ~/.venvs/doctor &&" \
      ". ~/.venvs/doctor/bin/activate && pip install python-dotenv 'pydantic>=2'"
  exec "$python" "$REPO_ROOT/src/doctor.py" "$@"
}

main "$@"
