#!/usr/bin/env bash
# Usage: scripts/render-nginx.sh OUT_DIR
#        scripts/render-nginx.sh --reload CONF_DIR PREFIX
#
# --reload: the running nginx (-p PREFIX, configuration in CONF_DIR) takes
# edited settings with docker/nginx/reload.sh, the container's own reload
# (render into a scratch folder, nginx -t, render in place, reload, wait for
# a new worker): scripts/local-stack.sh reload.
#
# Host runs (scripts/local-stack.sh) and the tests render Nginx's config with
# the very script the project's nginx image runs at start,
# docker/nginx/render.sh (checks, secrets, envsubst of the templates). This
# wrapper only adds what differs on a host:
#   * a relative NGINX_CERTS_DIR is taken relative to docker/ (as Compose does
#     with .env's ../certs); in the container it is /etc/nginx/certs;
#   * nginx listens on NGINX_BIND_ADDRESS (where Compose would publish)
#     instead of every address of the container.
# It does not read .env: callers export the settings first (e.g.
# `env NGINX_HTTP_PORT=8080 ... scripts/render-nginx.sh out`).
# Then run: nginx -p PREFIX/ -e stderr -c OUT_DIR/nginx.conf
# OUT_DIR itself is made traversable (711): when nginx starts as root, its
# workers (another user) read dashboard.htpasswd there, so every folder above
# OUT_DIR must be traversable by them too.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NGINX_DIR="$REPO_ROOT/docker/nginx"

usage() {
  printf 'Usage: %s OUT_DIR | --reload CONF_DIR PREFIX\n' "$(basename "$0")" >&2
  exit 2
}

trap 'log_error "nginx config not rendered into ${1:-OUT_DIR} (see above)"' ERR

resolve_certs_dir() {
  if [[ -n "${NGINX_CERTS_DIR:-}" && "$NGINX_CERTS_DIR" != /* ]]; then
    NGINX_CERTS_DIR="$(realpath -m "$REPO_ROOT/docker/$NGINX_CERTS_DIR")"
    export NGINX_CERTS_DIR
  fi
}

main() {
  if [[ "${1:-}" == --reload ]]; then
    [[ $# -eq 3 && -n "$2" && -n "$3" ]] || usage
    resolve_certs_dir
    trap - ERR
    RAY_LLM_NGINX_CONF_DIR="$2" RAY_LLM_NGINX_PREFIX="$3" sh "$NGINX_DIR/reload.sh"
    return
  fi
  [[ $# -eq 1 && -n "$1" ]] || usage
  local out_dir="$1"
  mkdir -p "$out_dir"
  chmod 711 "$out_dir"
  resolve_certs_dir
  sh "$NGINX_DIR/render.sh" "$NGINX_DIR/templates" "$out_dir"
}

main "$@"
