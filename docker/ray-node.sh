#!/usr/bin/env bash
# Entry point of the multi-node Compose profiles (and of the two-host test).
#
#   ray-node.sh head      diagnose, start Ray's head, then run src/deploy.py
#                         against it (which waits for NUM_NODES nodes)
#   ray-node.sh worker    diagnose, wait for the head's GCS port (bounded),
#                         then join it with `ray start --block`
#   ray-node.sh diagnose  the read-only checks alone: GPUs, RDMA devices,
#                         interfaces and their addresses
#
# Every node starts Ray with --node-ip-address=$VLLM_HOST_IP (its own fabric
# IP). Per-node variables stay on their node: they reach Ray and vLLM through
# this process's environment, never through Ray's runtime_env, and vLLM is told
# not to copy them from the engine's node to the others (see plan.md).
# A worker exits non-zero when it loses the head, so the restart policy brings
# it back and it rejoins.
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

PYTHON="${PYTHON:-python}"
# Variables whose value differs per node. vLLM copies NCCL_* and VLLM_* from
# the engine's process to every worker unless they are listed in its
# ray_non_carry_over_env_vars.json; the shared NCCL_* settings still travel.
PER_NODE_VARS=(VLLM_HOST_IP NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME NCCL_IB_HCA NCCL_IB_GID_INDEX)
# A raylet that cannot reach the GCS for this long exits, and so does
# `ray start --block`: a worker that lost its head stops instead of hanging.
export RAY_gcs_rpc_server_reconnect_timeout_s="${RAY_gcs_rpc_server_reconnect_timeout_s:-30}"
# Ray's usage report is on unless disabled: its dashboard probes cloud
# metadata addresses at start and reports hourly to usage-stats.ray.io. Off
# unless .env says otherwise (the offline test caught the probes).
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
# Even when disabled, a cluster started with `ray start` (not ray.init) sends
# one "usage stats disabled" report to usage-stats.ray.io from the head's
# dashboard (Ray 2.60, usage_stats_head._report_disabled_usage_sync; the
# air-gapped cluster test caught its name lookup). An empty report URL makes
# that request fail before any lookup or connection.
if [[ "$RAY_USAGE_STATS_ENABLED" == 0 ]]; then
  export RAY_USAGE_STATS_REPORT_URL="${RAY_USAGE_STATS_REPORT_URL:-}"
fi

CHILD_PIDS=()

# ------------------------------------------------------------ diagnostics ---
# Read-only: prints what this node sees, changes nothing.
diagnose() {
  local role="${1:-node}" name ifname value
  log_info "[$role] VLLM_HOST_IP=${VLLM_HOST_IP:-<unset>} RAY_HEAD_HOST=${RAY_HEAD_HOST:-<unset>}:${RAY_HEAD_PORT:-6379} DEVICE=${DEVICE:-gpu}"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>&1 | sed 's/^/    GPU: /' >&2 || log_warn "nvidia-smi failed: no GPU usable in this container"
  else
    log_info "GPUs: none visible (no nvidia-smi)"
  fi
  if [[ -d /dev/infiniband ]]; then
    log_info "RDMA devices: $(find /dev/infiniband -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null)"
  else
    log_info "RDMA devices: absent (/dev/infiniband missing; NCCL will use TCP sockets)"
  fi
  if [[ -d /sys/class/infiniband ]]; then
    log_info "RDMA HCAs: $(find /sys/class/infiniband -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null)"
  fi
  for name in NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME; do
    value="${!name:-}"
    [[ -n "$value" ]] || { log_info "$name: unset"; continue; }
    # NCCL syntax: comma list, optional leading = (exact) or ^ (exclude).
    IFS=',' read -ra ifnames <<<"${value#=}"
    for ifname in "${ifnames[@]}"; do
      [[ "$ifname" == ^* ]] && continue
      if [[ -e "/sys/class/net/$ifname" ]]; then
        log_info "$name: $ifname present, addresses: $(interface_addresses "$ifname")"
      else
        log_warn "$name: interface $ifname does not exist on this node"
      fi
    done
  done
  if [[ -n "${VLLM_HOST_IP:-}" ]]; then
    # "local ..." = the kernel delivers that address to this host.
    if ip route get "$VLLM_HOST_IP" 2>/dev/null | grep -q '^local '; then
      log_info "VLLM_HOST_IP $VLLM_HOST_IP is assigned on this node"
    else
      log_warn "VLLM_HOST_IP $VLLM_HOST_IP is not an address of this node: Ray and NCCL will fail"
    fi
  fi
}

interface_addresses() {
  ip -o addr show dev "$1" 2>/dev/null | awk '{print $4}' | paste -sd' ' - || true
}

# ------------------------------------------------------------------ setup ---
require_settings() {
  local role="$1"
  [[ -n "${VLLM_HOST_IP:-}" ]] || die "VLLM_HOST_IP must be set to this node's fabric IP (it differs per node)"
  [[ -n "${RAY_AUTH_TOKEN:-}" ]] ||
    die "RAY_AUTH_TOKEN must be set in .secrets, the same on every node (python3 -c 'import secrets; print(secrets.token_hex(32))')"
  if [[ "$role" == worker ]]; then
    [[ -n "${RAY_HEAD_HOST:-}" ]] || die "RAY_HEAD_HOST must be set to the head node's IP on a worker"
  fi
  RAY_HEAD_PORT="${RAY_HEAD_PORT:-6379}"
  # Ray reads the shared token from the environment on every node.
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
}

# vLLM's Ray executor copies NCCL_*/VLLM_* from the engine process to every
# worker; this file (in VLLM_CONFIG_ROOT) keeps per-node values on their node.
write_non_carry_over() {
  local dir="${VLLM_CONFIG_ROOT:-$HOME/.config/vllm}" json name
  json="$(printf '"%s",' "${PER_NODE_VARS[@]}")"
  mkdir -p "$dir"
  printf '[%s]\n' "${json%,}" >"$dir/ray_non_carry_over_env_vars.json"
  for name in "${PER_NODE_VARS[@]}"; do
    [[ -n "${!name:-}" ]] && export "${name?}"
  done
  return 0
}

# An empty NCCL_*/GLOO_*/AWS_* from .env would override the library's own
# default (an empty NCCL_SOCKET_IFNAME matches every interface; boto3 would take
# an empty AWS_ENDPOINT_URL_S3 as the store): unset those instead.
drop_empty_upstream_vars() {
  local name
  for name in $(compgen -v NCCL_) $(compgen -v GLOO_) $(compgen -v AWS_); do
    [[ -z "${!name}" ]] && unset "$name"
  done
  return 0
}

# Ray Serve LLM copies HF_TOKEN/HUGGING_FACE_HUB_TOKEN from a replica's
# environment into runtime_env, which Ray logs. Keep the token in a private
# file that huggingface_hub reads (HF_TOKEN_PATH) and out of Ray's environment.
stash_hf_token() {
  local token="${HF_TOKEN:-${HUGGING_FACE_HUB_TOKEN:-${HUGGINGFACE_TOKEN:-}}}" path dir
  unset HF_TOKEN HUGGING_FACE_HUB_TOKEN HUGGINGFACE_TOKEN
  [[ -n "$token" ]] || return 0
  path="${HF_TOKEN_PATH:-${TMPDIR:-/tmp}/ray-llm-$(id -u)/hf_token}"
  dir="$(dirname "$path")"
  if [[ ! -d "$dir" ]]; then
    mkdir -p "$dir"
    chmod 700 "$dir"
  fi
  (umask 077 && printf '%s' "$token" >"$path")
  export HF_TOKEN_PATH="$path"
}

ray_start_args() {
  RAY_ARGS=(--node-ip-address="$VLLM_HOST_IP" --metrics-export-port="${RAY_METRICS_PORT:-8080}"
    --disable-usage-stats --block)
  if [[ "${DEVICE:-gpu}" == gpu ]]; then
    RAY_ARGS+=(--num-gpus="${GPUS_PER_NODE:-1}")
  fi
  local extra=()
  read -ra extra <<<"${RAY_START_ARGS:-}"
  RAY_ARGS+=("${extra[@]}")
}

stop_children() {
  local pid
  for pid in "${CHILD_PIDS[@]}"; do
    pid_alive "$pid" && kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${CHILD_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}

# ------------------------------------------------------------------ roles ---
run_head() {
  require_settings head
  drop_empty_upstream_vars
  write_non_carry_over
  # Fail fast on bad configuration (exit 2) before starting anything.
  "$PYTHON" "$REPO_ROOT/src/deploy.py" --dry-run >/dev/null || exit 2
  stash_hf_token
  ray_start_args
  trap stop_children EXIT
  trap 'log_info "stopping head"; exit 143' TERM INT
  log_info "starting Ray head on $VLLM_HOST_IP:$RAY_HEAD_PORT"
  ray start --head --port="$RAY_HEAD_PORT" --dashboard-host="${RAY_API_HOST:-0.0.0.0}" \
    --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" "${RAY_ARGS[@]}" &
  CHILD_PIDS+=("$!")
  wait_until "${RAY_HEAD_START_TIMEOUT:-120}" "Ray head GCS on $VLLM_HOST_IP:$RAY_HEAD_PORT" \
    tcp_open "$VLLM_HOST_IP" "$RAY_HEAD_PORT"
  log_info "Ray head is up; deploying"
  RAY_ADDRESS="$VLLM_HOST_IP:$RAY_HEAD_PORT" "$PYTHON" "$REPO_ROOT/src/deploy.py" &
  CHILD_PIDS+=("$!")
  local rc=0
  wait -n "${CHILD_PIDS[@]}" || rc=$?
  log_error "head: a child exited (status $rc); stopping the node so the restart policy starts it again"
  exit $((rc == 0 ? 1 : rc))
}

wait_for_head() {
  local timeout="${RAY_HEAD_WAIT_TIMEOUT:-300}" deadline next_log=0
  deadline=$((SECONDS + timeout))
  until tcp_open "$RAY_HEAD_HOST" "$RAY_HEAD_PORT"; do
    if ((SECONDS >= deadline)); then
      die "head $RAY_HEAD_HOST:$RAY_HEAD_PORT unreachable after ${timeout}s: is the head up, RAY_HEAD_HOST right, the port open?"
    fi
    if ((SECONDS >= next_log)); then
      log_info "waiting for the head's GCS at $RAY_HEAD_HOST:$RAY_HEAD_PORT ($((deadline - SECONDS))s left)"
      next_log=$((SECONDS + 10))
    fi
    sleep 1
  done
  log_info "head $RAY_HEAD_HOST:$RAY_HEAD_PORT is reachable"
}

run_worker() {
  require_settings worker
  drop_empty_upstream_vars
  write_non_carry_over
  stash_hf_token
  wait_for_head
  ray_start_args
  trap stop_children EXIT
  trap 'log_info "stopping worker"; exit 143' TERM INT
  log_info "joining $RAY_HEAD_HOST:$RAY_HEAD_PORT as $VLLM_HOST_IP"
  ray start --address="$RAY_HEAD_HOST:$RAY_HEAD_PORT" "${RAY_ARGS[@]}" &
  CHILD_PIDS+=("$!")
  local rc=0
  wait "${CHILD_PIDS[0]}" || rc=$?
  log_error "worker: Ray exited (status $rc): lost the head or failed to join"
  exit $((rc == 0 ? 1 : rc))
}

# In Compose, .secrets is a mounted file (docker/container-entrypoint.sh
# points RAY_LLM_SECRETS_FILE at it): read RAY_AUTH_TOKEN, HF_TOKEN and the
# adapter store's AWS keys there.
# Variables already set win, as everywhere else.
load_secrets() {
  [[ -n "${RAY_LLM_SECRETS_FILE:-}" ]] || return 0
  [[ -r "$RAY_LLM_SECRETS_FILE" ]] || die "cannot read the secrets file $RAY_LLM_SECRETS_FILE (RAY_LLM_SECRETS_FILE)"
  load_env_files "$RAY_LLM_SECRETS_FILE"
}

# Ray's workers on this node inherit both from `ray start`: src/ on PYTHONPATH
# (the model server class with the hang watchdog, src/engine_watchdog.py), and
# on the head the HTTP proxy's middleware that puts /v1 errors in OpenAI's
# shape (the value deploy.py exports: proxy_middlewares.PROXY_CALLBACK).
export_src_path() {
  export PYTHONPATH="$REPO_ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
  export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=proxy_middlewares.proxy_middlewares
}

main() {
  load_secrets
  export_src_path
  case "${1:-}" in
    head) diagnose head; run_head ;;
    worker) diagnose worker; run_worker ;;
    diagnose) diagnose node ;;
    *) die "usage: ray-node.sh head|worker|diagnose" ;;
  esac
}

main "$@"
