#!/usr/bin/env bash
# Usage: scripts/render-nginx.sh OUT_DIR
#
# Renders docker/nginx/templates/*.template into OUT_DIR the way the official
# nginx image (NGINX_IMAGE in .env) does at container start, so host runs
# (scripts/local-stack.sh) and the tests use the very config Compose uses:
#   1. /docker-entrypoint.sh sources the executable *.envsh files of
#      /docker-entrypoint.d/ with `set -e`: here
#      docker/nginx/entrypoint.d/05-ray-llm.envsh, which checks the settings
#      and exports the derived NGINX_* variables (or stops everything);
#   2. 20-envsubst-on-templates.sh runs, for each template,
#      envsubst "${VAR1} ${VAR2} ..." with the names of every variable defined
#      in the environment (so anything else, e.g. nginx's $host, is kept), into
#      NGINX_ENVSUBST_OUTPUT_DIR with the .template suffix removed.
# Then run: nginx -p PREFIX/ -e stderr -c OUT_DIR/nginx.conf
#
# It does not read .env: callers export the settings first (e.g.
# `env NGINX_HTTP_PORT=8080 ... scripts/render-nginx.sh out`).
# Differences from the container, for host runs only:
#   * a relative NGINX_CERTS_DIR is taken relative to docker/ (as Compose does
#     with .env's ../certs); in the container it is /etc/nginx/certs;
#   * nginx listens on NGINX_BIND_ADDRESS (where Compose would publish)
#     instead of every address of the container.
# The output holds OPENAI_API_KEY, RAY_AUTH_TOKEN and, when the dashboard is
# on, the envsh's dashboard.htpasswd, so its files are private (umask 077).
# OUT_DIR itself is made traversable (711): when nginx starts as root, its
# workers (another user) read dashboard.htpasswd there, so every folder above
# OUT_DIR must be traversable by them too.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TEMPLATE_DIR="$REPO_ROOT/docker/nginx/templates"
ENVSH="$REPO_ROOT/docker/nginx/entrypoint.d/05-ray-llm.envsh"

usage() {
  printf 'Usage: %s OUT_DIR\n' "$(basename "$0")" >&2
  exit 2
}

# Host-run inputs of the envsh (see the header).
prepare_host_env() {
  local out_dir="$1"
  export NGINX_ENVSUBST_TEMPLATE_DIR="$TEMPLATE_DIR"
  export NGINX_ENVSUBST_OUTPUT_DIR="$out_dir"
  if [[ -n "${NGINX_CERTS_DIR:-}" && "$NGINX_CERTS_DIR" != /* ]]; then
    NGINX_CERTS_DIR="$(realpath -m "$REPO_ROOT/docker/$NGINX_CERTS_DIR")"
    export NGINX_CERTS_DIR
  fi
}

# Step 2 above: envsubst restricted to the names of defined variables.
render_templates() {
  local template_dir="$1" out_dir="$2" defined_envs template relative output
  # shellcheck disable=SC2016  # the ${...} are literal, for envsubst
  defined_envs="$(awk 'END { for (name in ENVIRON) printf "${%s} ", name }' </dev/null)"
  while IFS= read -r template; do
    relative="${template#"$template_dir/"}"
    output="$out_dir/${relative%.template}"
    mkdir -p "$(dirname "$output")"
    envsubst "$defined_envs" <"$template" >"$output"
    log_info "rendered $output"
  done < <(find "$template_dir" -follow -type f -name '*.template' -print | sort)
}

trap 'log_error "nginx config not rendered into ${1:-OUT_DIR} (see above)"' ERR

main() {
  [[ $# -eq 1 && -n "$1" ]] || usage
  local out_dir="$1"
  umask 077
  mkdir -p "$out_dir"
  chmod 711 "$out_dir"
  out_dir="$(cd "$out_dir" && pwd)"
  prepare_host_env "$out_dir"
  # Step 1 then 2, in a subshell standing for the entrypoint's shell: the
  # envsh ends it with `exit 1` on a bad setting (its message is on stderr),
  # and `set -e` then stops this script too. The entrypoint sources it without
  # `set -u`; so does this.
  (
    set +u
    # shellcheck source=docker/nginx/entrypoint.d/05-ray-llm.envsh
    . "$ENVSH"
    set -u
    render_templates "$TEMPLATE_DIR" "$out_dir"
  )
}

main "$@"
