#!/usr/bin/env bash
# Shared helpers for every script in this repo. Source it; never execute it.
# Callers set `set -Eeuo pipefail` themselves.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
# Where this kind of machine keeps the CPU build of torch (see plan.md).
TORCH_CPU_FIND_LINKS="${TORCH_CPU_FIND_LINKS:-/opt/wheels}"
# Everything generated at run time lives under one gitignored folder.
RUNTIME_DIR="${RUNTIME_DIR:-$REPO_ROOT/.runtime}"

log_info()  { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
log_warn()  { printf '[%s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
log_error() { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()       { log_error "$*"; exit 1; }

# wait_until TIMEOUT_S DESCRIPTION CMD [ARGS...]
# Polls CMD every second until it succeeds; fails with a clear message after
# TIMEOUT_S seconds. The one sanctioned way to wait for something.
wait_until() {
  local timeout="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log_error "timed out after ${timeout}s waiting for: $what"
      return 1
    fi
    sleep 1
  done
}

# tcp_open HOST PORT: true when something accepts TCP connections there.
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# pid_alive PID: true while a process with that PID exists.
pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# The one shell dotenv parser, shared with the Nginx image (POSIX sh); the
# main image copies it beside lib.sh as here (/app/docker/nginx/dotenv.sh).
# shellcheck source=docker/nginx/dotenv.sh
source "$REPO_ROOT/docker/nginx/dotenv.sh"

# load_env_files FILE...: export KEY=VALUE lines from dotenv-style files
# without overriding variables already set in the environment (Compose's rule:
# the shell wins), by dotenv.sh's rules (values literal, quotes removed).
load_env_files() {
  local ray_llm_env_file
  for ray_llm_env_file in "$@"; do
    [[ -f "$ray_llm_env_file" ]] || continue
    ray_llm_dotenv_each "$ray_llm_env_file" _ray_llm_export_unless_set
  done
}
_ray_llm_export_unless_set() { [[ -v "$1" ]] || export "$1=$2"; }

# ensure_uv: make `uv` available (PyPI is reachable on every machine of ours).
ensure_uv() {
  command -v uv >/dev/null 2>&1 && return 0
  log_info "installing uv from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check uv >&2
  command -v uv >/dev/null 2>&1 || die "uv was installed but is not on PATH"
}

# ensure_cpu_venv DIR: create/refresh the CPU engine venv from the locks.
ensure_cpu_venv() {
  local venv="$1"
  ensure_uv
  [[ -d "$TORCH_CPU_FIND_LINKS" ]] ||
    log_warn "$TORCH_CPU_FIND_LINKS is missing; torch==2.13.0+cpu must come from another index (see plan.md)"
  if [[ ! -x "$venv/bin/python" ]]; then
    UV_PYTHON_DOWNLOADS=never uv venv --quiet --python python3.11 "$venv" >&2
  fi
  UV_PYTHON_DOWNLOADS=never VIRTUAL_ENV="$venv" uv pip sync --quiet --compile-bytecode \
    --find-links "$TORCH_CPU_FIND_LINKS" \
    requirements-cpu.txt requirements-dev.txt >&2
}

# secure_secrets_file FILE: a secrets file others can read is fixed to 0600
# (with a warning) before anything reads it. deploy.py refuses such a file.
secure_secrets_file() {
  local file="$1" mode
  [[ -f "$file" ]] || return 0
  mode="$(stat -c '%a' "$file")"
  if (((8#$mode & 8#077) != 0)); then
    log_warn "$file had mode $mode (readable by other users); fixing it: chmod 600 $file"
    chmod 600 "$file"
  fi
}

# Debian archive used when the machine's apt sources name none.
FALLBACK_MIRROR=http://deb.debian.org/debian

# debian_mirror [security]: the Debian archive URL the machine's own apt uses
# (one-line or deb822 sources; `security`: the debian-security one), else
# FALLBACK_MIRROR. Used to fetch packages and debootstrap the stand-ins.
debian_mirror() {
  local want="${1:-main}" url file files=()
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f "$file" ]] && files+=("$file")
  done
  ((${#files[@]})) || files=(/dev/null)
  url="$(awk '
    /^[[:space:]]*deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { print $i; break } }
    /^[[:space:]]*URIs:/ { for (i = 2; i <= NF; i++) print $i }
  ' "${files[@]}" | sed 's:/*$::' | awk -v want="$want" '
    want == "security" && $0 ~ /\/debian-security$/ { print; exit }
    want != "security" && $0 ~ /\/debian$/ { print; exit }
  ')"
  if [[ -z "$url" && "$want" == security ]]; then
    url="${FALLBACK_MIRROR%/debian}/debian-security"
  fi
  printf '%s\n' "${url:-$FALLBACK_MIRROR}"
}

# python_with MODULE...: a Python that imports all of them (the test
# command's venv first, then the host's python3); fails when none does.
python_with() {
  local candidate imports
  imports=$(IFS=,; echo "$*")
  for candidate in "$RUNTIME_DIR/venv/bin/python" python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import $imports" 2>/dev/null; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

# The Compose service that serves on this machine (the first of .env's
# COMPOSE_PROFILES; the shell's value wins): where user commands run in the image.
serving_service() {
  local profile
  profile=$(compose_profile)
  case "$profile" in
    single) echo ray-serve ;;
    cpu) echo ray-serve-cpu ;;
    head) echo ray-head ;;
    worker) echo ray-worker ;;
    *) die "COMPOSE_PROFILES=$profile: expected single, cpu, head or worker" ;;
  esac
}

# The first of COMPOSE_PROFILES, the shell's or .env's (Compose's rule). Runs
# in $(...), so what load_env_files exports stays in that subshell.
compose_profile() {
  load_env_files "$REPO_ROOT/.env"
  local profiles="${COMPOSE_PROFILES:-}"
  printf '%s\n' "${profiles%%,*}"
}
