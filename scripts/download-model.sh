#!/usr/bin/env bash
# Fill the model cache ahead of time (src/download_model.py has the options).
#   scripts/download-model.sh [--model ID] [--revision REV] [--include GLOB]...
#       into the model-cache volume, in the image (docker compose run), for
#       the serving service of COMPOSE_PROFILES; MODEL_ID from .env by default
#   scripts/download-model.sh --dest models/NAME [...]
#       into a folder on this host (then MODELS_DIR + MODEL_SOURCE=/models/NAME)
# HF_TOKEN is read from .secrets (or the environment) and never printed.
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  local arg on_host=0
  for arg in "$@"; do
    [[ "$arg" == --dest || "$arg" == --dest=* ]] && on_host=1
    [[ "$arg" == -h || "$arg" == --help ]] && on_host=1
  done
  if (( on_host )); then
    local python
    python=$(python_with dotenv huggingface_hub) ||
      die "--dest needs python3 with huggingface_hub and python-dotenv (pip install huggingface_hub python-dotenv); without --dest the download runs in the image"
    exec "$python" "$REPO_ROOT/src/download_model.py" "$@"
  fi
  local service
  # The serving service of the active profile: the one that mounts the cache.
  service=$(serving_service)
  log_info "downloading in the image of $service, into the model-cache volume"
  cd "$REPO_ROOT"
  exec docker compose run --rm --no-deps -T "$service" \
    uv run --offline --no-project python /app/src/download_model.py "$@"
}

main "$@"
