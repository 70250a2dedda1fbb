#!/usr/bin/env bash
# The Compose settings (.env, MODELS_FILE) as a Ray Serve config for a Ray
# cluster something else manages (`serve deploy`, KubeRay's serveConfigV2):
# writes serve-config.yaml, ray-node.env and rayservice.yaml (KubeRay) into DIR
# (docs/outgrow-compose.md).
#   scripts/serve-config.sh DIR
# Runs `deploy.py --serve-config` in the image of the serving service of
# COMPOSE_PROFILES, so Ray Serve LLM and vLLM of that image check it: bad
# settings exit 2 and write nothing. No secret is read into the files.
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  [[ $# -eq 1 && "$1" != -* ]] || die "usage: scripts/serve-config.sh DIR"
  local dest service scratch rc=0
  mkdir -p "$1"
  dest=$(cd "$1" && pwd)
  service=$(serving_service)
  scratch=$(mktemp -d)
  # shellcheck disable=SC2064  # expand now: the path is fixed
  trap "rm -rf '$scratch'" EXIT
  log_info "checking the settings in the image of $service and writing the Serve config"
  cd "$REPO_ROOT"
  # The files leave the container as a tar on stdout: no bind mount, so the
  # image's user never needs write access to DIR.
  # shellcheck disable=SC2016  # $out belongs to the container's shell
  docker compose run --rm --no-deps -T "$service" sh -c \
    'out=$(mktemp -d) && python /app/src/deploy.py --serve-config "$out" >&2 && tar -C "$out" -cf - .' \
    >"$scratch/out.tar" || rc=$?
  ((rc == 0)) || die "deploy.py --serve-config failed in $service (exit $rc): nothing written"
  tar -C "$dest" -xf "$scratch/out.tar"
  log_info "wrote serve-config.yaml, ray-node.env and rayservice.yaml into $dest"
}

main "$@"
