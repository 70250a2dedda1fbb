#!/usr/bin/env bash
# Usage: scripts/reload-nginx.sh [SERVICE]
#
# Apply an edited .secrets (API keys added or revoked, the dashboard's user or
# password) to the running Compose Nginx without restarting anything: the
# file is piped into the container's docker/nginx/reload.sh, which checks the
# new configuration and reloads nginx gracefully (streams in flight finish).
# A bad value is refused, naming the variable, and the running configuration
# stays. SERVICE defaults to nginx-head when COMPOSE_PROFILES has head, else
# nginx. Run from anywhere in the checkout; reads .env like Compose does.
# (Host runs: scripts/local-stack.sh reload.)
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  (($# <= 1)) || die "usage: scripts/reload-nginx.sh [SERVICE]"
  load_env_files "$REPO_ROOT/.env"
  local service="${1:-}" secrets="${SECRETS_FILE:?SECRETS_FILE must be set in .env}"
  if [[ -z "$service" ]]; then
    service=nginx
    [[ ",${COMPOSE_PROFILES:-}," == *,head,* ]] && service=nginx-head
  fi
  # Relative to docker/, as in the compose file.
  [[ "$secrets" == /* ]] || secrets="$REPO_ROOT/docker/$secrets"
  [[ -r "$secrets" ]] || die "cannot read the secrets file $secrets (SECRETS_FILE in .env)"
  secure_secrets_file "$secrets"
  cd "$REPO_ROOT"
  docker compose exec -T "$service" /usr/local/lib/ray-llm-nginx/reload.sh - <"$secrets"
}

main "$@"
