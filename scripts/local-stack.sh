#!/usr/bin/env bash
# The whole stack without Docker: src/deploy.py (Ray Serve LLM) behind the real
# Nginx, rendered from the same template as the Compose nginx service.
#
#   scripts/local-stack.sh up [--no-wait] [serve|nginx]
#                                   start (both by default); returns once
#                                   Nginx's /readyz (a real completion from every
#                                   model) says ready, or at once with --no-wait
#                                   (then: status)
#   scripts/local-stack.sh down [serve|nginx]  stop what `up` started (by PID)
#   scripts/local-stack.sh reload   apply an edited .secrets (API keys) or Nginx
#                                   setting to the running Nginx: checked, then
#                                   a graceful reload (streams in flight finish)
#   scripts/local-stack.sh status   what runs, and whether the model answers
#   scripts/local-stack.sh logs [-f] tails of the logs
#
# Reads .env and .secrets like Compose does; variables already set in the shell
# win. On a machine without an NVIDIA GPU it runs the CPU engine and, when no
# MODEL_SOURCE is given, a tiny local model (built on first use, no download).
# Logs, PIDs and rendered config live under .runtime/local-stack/ (gitignored).
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STACK_DIR="${LOCAL_STACK_DIR:-$RUNTIME_DIR/local-stack}"
VENV="${LOCAL_STACK_VENV:-$RUNTIME_DIR/venv}"
TINY_MODEL_DIR="$RUNTIME_DIR/models/tiny-llama"
TINY_MODEL_NAME="tiny-llama"
UP_TIMEOUT="${LOCAL_STACK_TIMEOUT:-600}"
NGINX_BIN="${NGINX_BIN:-nginx}"

serve_pid_file() { echo "$STACK_DIR/serve.pid"; }
nginx_pid_file() { echo "$STACK_DIR/nginx.pid"; }
read_pid() { [[ -f "$1" ]] && cat "$1" || true; }

# ----------------------------------------------------------------- config ---
# Local adjustments come before .env so the shell still wins over both, and
# .env wins over nothing but these defaults where noted.
configure() {
  # Nginx reaches Serve on loopback here (Compose uses the service name), and
  # Serve/dashboard stay on loopback.
  export NGINX_UPSTREAM_HOST="${NGINX_UPSTREAM_HOST_LOCAL:-127.0.0.1}"
  : "${RAY_API_HOST:=127.0.0.1}"
  export RAY_API_HOST
  if [[ -z "${DEVICE:-}" ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
    export DEVICE=cpu
    log_info "no NVIDIA GPU found: DEVICE=cpu"
  fi
  secure_secrets_file "$REPO_ROOT/.secrets"
  load_env_files "$REPO_ROOT/.env" "$REPO_ROOT/.secrets"
  RAY_API_PORT="${RAY_API_PORT:?RAY_API_PORT must be set in .env}"
  RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:?RAY_DASHBOARD_PORT must be set in .env}"
  NGINX_HTTP_PORT="${NGINX_HTTP_PORT:?NGINX_HTTP_PORT must be set in .env}"
  # MODELS_FILE names each model's source itself.
  if [[ "$DEVICE" == "cpu" && -z "${MODEL_SOURCE:-}" && -z "${MODELS_FILE:-}" ]]; then
    export MODEL_SOURCE="$TINY_MODEL_DIR"
    [[ -n "${SERVED_MODEL_NAME:-}" ]] || export SERVED_MODEL_NAME="$TINY_MODEL_NAME"
    export HF_HUB_OFFLINE=1
    USING_TINY_MODEL=1
  fi
  SERVED_DESCRIPTION="model '${SERVED_MODEL_NAME:-${MODEL_ID:-}}'"
  [[ -z "${MODELS_FILE:-}" ]] || SERVED_DESCRIPTION="the models of MODELS_FILE=$MODELS_FILE"
}

check_port_free() { # NAME PORT
  if tcp_open 127.0.0.1 "$2"; then
    die "$1=$2 is already in use on this machine; stop what uses it or set $1 to a free port"
  fi
}

# -------------------------------------------------------------- processes ---
# start_bg NAME PIDFILE CMD...: start CMD in its own session, logging to NAME.log.
start_bg() {
  local name="$1" pid_file="$2"
  shift 2
  setsid "$@" >>"$STACK_DIR/$name.log" 2>&1 </dev/null &
  echo "$!" >"$pid_file"
}

# stop_session PIDFILE NAME SIGNAL: send SIGNAL to the session's leader (the
# process `up` started) and wait up to the grace period, as `docker stop` does;
# then TERM, and finally KILL, whatever is left in its session (Ray's daemons
# live there too).
stop_session() {
  local pid_file="$1" name="$2" signal="$3" pid
  pid="$(read_pid "$pid_file")"
  [[ -n "$pid" ]] || return 0
  if pid_alive "$pid"; then
    log_info "stopping $name (SIG$signal, up to ${GRACE_S}s for in-flight requests)"
    kill -"$signal" "$pid" 2>/dev/null || true
    if ! wait_until "$GRACE_S" "$name to stop" session_empty "$pid"; then
      log_warn "$name still running after ${GRACE_S}s; terminating its session"
      pkill -TERM -s "$pid" 2>/dev/null || true
      wait_until 20 "$name to stop" session_empty "$pid" || true
    fi
  fi
  # Stragglers that outlived their leader still carry the session id (Ray's
  # HAProxy, for one): name them, kill them, and wait until they are gone.
  if ! session_empty "$pid"; then
    log_info "$name: killing what outlived it: $(pgrep -s "$pid" -l | tr '\n' ' ')"
    pkill -KILL -s "$pid" 2>/dev/null || true
    wait_until 20 "$name's leftovers to go" session_empty "$pid" || true
  fi
  rm -f "$pid_file"
}

# SERVE_STOP_GRACE_PERIOD (Compose duration, e.g. 60s, 2m) in seconds, with
# settings.py's parser (the one duration syntax), in the venv that runs the stack.
grace_seconds() {
  local value="${SERVE_STOP_GRACE_PERIOD:-60s}"
  "$VENV/bin/python" "$REPO_ROOT/src/settings.py" duration "$value" ||
    die "SERVE_STOP_GRACE_PERIOD=$value is not a duration like 60s or 2m"
}

session_empty() { ! pgrep -s "$1" >/dev/null 2>&1; }

# Nginx's /readyz: every served model answered a 1-token completion.
models_ready() {
  curl -fsS --max-time 30 "http://127.0.0.1:$NGINX_HTTP_PORT/readyz" >/dev/null
}

serve_alive() { pid_alive "$(read_pid "$(serve_pid_file)")"; }

ready_or_dead() { ! serve_alive || models_ready; }

show_log_tails() {
  local log
  for log in "$STACK_DIR"/serve.log "$STACK_DIR"/nginx.log; do
    [[ -f "$log" ]] || continue
    printf '\n----- last 40 lines of %s -----\n' "$log" >&2
    tail -n 40 "$log" >&2
  done
}

# --------------------------------------------------------------- commands ---
prepare() {
  mkdir -p "$STACK_DIR"
  configure
  [[ -x "$VENV/bin/python" ]] || { log_info "creating the CPU venv in $VENV"; (cd "$REPO_ROOT" && ensure_cpu_venv "$VENV"); }
  command -v "$NGINX_BIN" >/dev/null 2>&1 || die "nginx is not installed (Debian: apt-get install nginx-light gettext-base)"
  command -v curl >/dev/null 2>&1 || die "curl is not installed"
}

start_serve() {
  serve_alive && die "Ray Serve is already running (scripts/local-stack.sh status)"
  check_port_free RAY_API_PORT "$RAY_API_PORT"
  check_port_free RAY_DASHBOARD_PORT "$RAY_DASHBOARD_PORT"
  if [[ -n "${USING_TINY_MODEL:-}" ]]; then
    log_info "no MODEL_SOURCE on a CPU machine: serving the tiny local model as '$SERVED_MODEL_NAME'"
    "$VENV/bin/python" "$REPO_ROOT/tools/make-tiny-model.py" "$TINY_MODEL_DIR" >&2
  fi
  : >"$STACK_DIR/serve.log"
  log_info "starting Ray Serve LLM (logs: $STACK_DIR/serve.log)"
  start_bg serve "$(serve_pid_file)" "$REPO_ROOT/scripts/local-stack.sh" _supervise \
    "$VENV/bin/python" "$REPO_ROOT/src/deploy.py"
  wait_config_checked
}

# deploy.py checks every setting, with Ray's and vLLM's own validators, before
# it starts anything (all problems at once, exit 2). `up` waits for that
# verdict, so bad settings still start nothing (not even Nginx), without a
# second process that imports Ray and vLLM for the same check first: that
# was 9 s of every start here (docs/benchmarks.md, "Start-up cut 2").
config_checked() { grep -q "^deploy.py: starting with " "$STACK_DIR/serve.log"; }
config_verdict() { ! serve_alive || config_checked; }
config_error_logged() { grep -q "^deploy.py: configuration error" "$STACK_DIR/serve.log"; }

wait_config_checked() {
  wait_until "$UP_TIMEOUT" "deploy.py's configuration check" config_verdict && config_checked && return 0
  if config_error_logged; then
    sed -n '/^deploy.py: configuration error/,$p' "$STACK_DIR/serve.log" >&2
  else
    show_log_tails
  fi
  GRACE_S="$(grace_seconds)"
  stop_session "$(serve_pid_file)" "Ray Serve" TERM
  config_error_logged && die "configuration is invalid (see above); nothing was started"
  die "deploy.py stopped before its configuration check finished (see above)"
}

# _supervise CMD...: the local stand-in for Compose's restart policy. Runs CMD
# (deploy.py) and starts it again when it exits with status 3: the app stayed
# unhealthy past WATCHDOG_RECOVERY_TIMEOUT. SIGTERM (down) is passed on.
cmd_supervise() {
  local child rc
  trap 'kill -TERM "$child" 2>/dev/null || true' TERM
  while true; do
    "$@" &
    child=$!
    rc=0
    wait "$child" || rc=$?
    # A signal ends `wait` early: wait for deploy.py's own exit status.
    while kill -0 "$child" 2>/dev/null; do
      rc=0
      wait "$child" || rc=$?
    done
    ((rc == 3)) || return "$rc"
    log_warn "deploy.py exited with status 3 (unhealthy past WATCHDOG_RECOVERY_TIMEOUT): starting it again"
  done
}

start_nginx() {
  pid_alive "$(read_pid "$(nginx_pid_file)")" && die "nginx is already running (scripts/local-stack.sh status)"
  if ((EUID != 0)) && ((NGINX_HTTP_PORT < 1024)); then
    die "NGINX_HTTP_PORT=$NGINX_HTTP_PORT needs root; run e.g. NGINX_HTTP_PORT=8080 scripts/local-stack.sh up"
  fi
  check_port_free NGINX_HTTP_PORT "$NGINX_HTTP_PORT"
  check_port_free NGINX_STATUS_PORT "${NGINX_STATUS_PORT:?NGINX_STATUS_PORT must be set in .env}"
  check_port_free NGINX_TUNNEL_PORT "${NGINX_TUNNEL_PORT:?NGINX_TUNNEL_PORT must be set in .env}"
  rm -rf "$STACK_DIR/nginx" && mkdir -p "$STACK_DIR/nginx/prefix"
  "$REPO_ROOT/scripts/render-nginx.sh" "$STACK_DIR/nginx/conf" >&2
  local nginx_cmd=("$NGINX_BIN" -p "$STACK_DIR/nginx/prefix/" -e stderr -c "$STACK_DIR/nginx/conf/nginx.conf")
  "${nginx_cmd[@]}" -t 2>"$STACK_DIR/nginx-test.log" || { cat "$STACK_DIR/nginx-test.log" >&2; die "nginx -t failed"; }
  : >"$STACK_DIR/nginx.log"
  # As root, nginx's workers would switch to an unprivileged user that cannot
  # read files under a private checkout (e.g. /root); this is a local dev
  # stack, so they keep the caller's identity.
  local globals='daemon off;'
  ((EUID == 0)) && globals+=' user root;'
  log_info "starting nginx on port $NGINX_HTTP_PORT (logs: $STACK_DIR/nginx.log)"
  start_bg nginx "$(nginx_pid_file)" "${nginx_cmd[@]}" -g "$globals"
}

wait_ready() {
  log_info "waiting up to ${UP_TIMEOUT}s for /readyz through nginx (a completion from every model)"
  if ! wait_until "$UP_TIMEOUT" "/readyz through nginx on port $NGINX_HTTP_PORT" ready_or_dead || ! serve_alive; then
    serve_alive || log_error "deploy.py exited before the model was ready"
    show_log_tails
    cmd_down
    die "the local stack did not come up"
  fi
  log_info "ready: http://127.0.0.1:$NGINX_HTTP_PORT/v1 ($SERVED_DESCRIPTION)"
}

# up [--no-wait] [serve|nginx]: both by default; one part to restart it alone.
cmd_up() {
  local wait=1
  if [[ "${1:-}" == "--no-wait" ]]; then
    wait=0
    shift
  fi
  local part="${1:-all}"
  prepare
  case "$part" in
    all) start_serve; start_nginx ;;
    serve) start_serve; pid_alive "$(read_pid "$(nginx_pid_file)")" || start_nginx ;;
    nginx) start_nginx ;;
    *) die "unknown part '$part': expected serve or nginx" ;;
  esac
  if ((wait)); then
    wait_ready
  else
    log_info "started without waiting for /readyz (scripts/local-stack.sh status tells when it answers)"
  fi
}

# down [serve|nginx]: both by default, in Compose's order: nginx first with
# SIGQUIT (it finishes in-flight requests), then Ray Serve with SIGTERM
# (deploy.py drains its replicas).
cmd_down() {
  local part="${1:-all}"
  load_env_files "$REPO_ROOT/.env"
  GRACE_S="$(grace_seconds)"
  case "$part" in
    all) stop_session "$(nginx_pid_file)" nginx QUIT; stop_session "$(serve_pid_file)" "Ray Serve" TERM ;;
    serve) stop_session "$(serve_pid_file)" "Ray Serve" TERM ;;
    nginx) stop_session "$(nginx_pid_file)" nginx QUIT ;;
    *) die "unknown part '$part': expected serve or nginx" ;;
  esac
  log_info "stopped: $part"
}

# reload: docker/nginx/reload.sh, as in the container (through
# render-nginx.sh): a bad value leaves the running Nginx as it was; done once a
# worker with the new configuration runs.
cmd_reload() {
  local pid
  pid="$(read_pid "$(nginx_pid_file)")"
  pid_alive "$pid" || die "nginx is not running (scripts/local-stack.sh up)"
  configure
  PATH="$(dirname "$(command -v "$NGINX_BIN")"):$PATH" \
    "$REPO_ROOT/scripts/render-nginx.sh" --reload "$STACK_DIR/nginx/conf" "$STACK_DIR/nginx/prefix/" ||
    die "nothing reloaded: the running configuration stays"
}

cmd_status() {
  local name pid rc=0
  for name in serve nginx; do
    pid="$(read_pid "$STACK_DIR/$name.pid")"
    if pid_alive "$pid"; then
      echo "$name: running (pid $pid)"
    else
      echo "$name: stopped"
      rc=3
    fi
  done
  if ((rc == 0)); then
    configure
    if models_ready; then echo "model: answering"; else echo "model: not answering yet"; rc=4; fi
  fi
  return "$rc"
}

cmd_logs() {
  local logs=("$STACK_DIR/serve.log" "$STACK_DIR/nginx.log")
  if [[ "${1:-}" == "-f" ]]; then
    exec tail -n 50 -F "${logs[@]}"
  fi
  tail -n 100 "${logs[@]}"
}

main() {
  local command="${1:-}"
  shift || true
  case "$command" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    reload) cmd_reload "$@" ;;
    logs) cmd_logs "$@" ;;
    _supervise) cmd_supervise "$@" ;;
    *) die "usage: scripts/local-stack.sh up [--no-wait] [serve|nginx] | down [serve|nginx] | reload | status | logs [-f]" ;;
  esac
}

main "$@"
