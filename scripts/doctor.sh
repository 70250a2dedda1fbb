#!/usr/bin/env bash
# Read-only preflight for this node, before `docker compose up` (src/doctor.py
# has the checks). Prints pass/warn/fail with a fix for each; exits 1 on any
# fail. Options: --profile single|cpu|head|worker, --json.
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  local python
  # python-dotenv: what deploy.py reads .env with.
  python=$(python_with dotenv) ||
    die "doctor needs python3 with python-dotenv: apt install python3-dotenv (or pip install python-dotenv)"
  exec "$python" "$REPO_ROOT/src/doctor.py" "$@"
}

main "$@"
