#!/usr/bin/env bash
# Serving benchmark, side by side: bare vLLM, Ray Serve LLM direct, and the
# full stack through Nginx, loaded by vLLM's own client (`vllm bench serve`)
# at concurrency 1, 16 and 64 (scripts/bench.py has the details and options).
#   scripts/bench.sh                     one cycle on this machine (CPU engine)
#   scripts/bench.sh --cycles 3          three cycles, medians reported
#   scripts/bench.sh --url http://HOST/v1 --api-key KEY [--model NAME]
#                                        the same workload against a deployment
# Prints progress on stderr, then a table and, as the last line, JSON.
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  local venv="$RUNTIME_DIR/venv"
  # The test command's venv (CPU vLLM + Ray, vLLM's benchmark client); made here when missing.
  [[ -x "$venv/bin/python" ]] || ensure_cpu_venv "$venv"
  exec "$venv/bin/python" "$REPO_ROOT/scripts/bench.py" --python "$venv/bin/python" "$@"
}

main "$@"
