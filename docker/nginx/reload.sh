#!/bin/sh
# reload.sh [-]: apply edited settings of .secrets (API keys, the dashboard's
# user and password) and of the container's environment without a restart.
#
# Renders the configuration again with render.sh (the start's one path) into
# a scratch folder and checks it with `nginx -t`; only then renders it in
# place and tells the running nginx to reload: new workers take new requests
# with the new keys, old workers finish their requests (streams included)
# and exit. A bad value (a short key, two consumers with one key) stops here,
# naming the variable, and the running configuration stays as it was.
#
# The secrets come from the mounted .secrets ($RAY_LLM_SECRETS_FILE), or with
# '-' from stdin: scripts/reload-nginx.sh pipes the host's file in, because a
# file mounted into a container keeps the inode it had at the start and most
# editors save by writing a new file.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# Where the entrypoint rendered and nginx's -p prefix (the image's; tests of
# host runs set their own).
conf_dir=${RAY_LLM_NGINX_CONF_DIR:-/etc/nginx/conf.d}
prefix=${RAY_LLM_NGINX_PREFIX:-/tmp/}
umask 077

scratch=$(mktemp -d "$conf_dir/.reload.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
if [ "${1:-}" = - ]; then
    cat >"$scratch/secrets"
    RAY_LLM_SECRETS_FILE="$scratch/secrets"
    export RAY_LLM_SECRETS_FILE
elif [ $# -ne 0 ]; then
    echo "Usage: reload.sh [-]" >&2
    exit 2
fi

"$here/render.sh" "$here/templates" "$scratch/check" 2>"$scratch/render.log" || {
    grep -v '^render.sh: rendered' "$scratch/render.log" >&2
    echo "reload.sh: nothing changed: the running configuration stays" >&2
    exit 1
}
if ! nginx -q -t -p "$prefix" -e stderr -c "$scratch/check/nginx.conf"; then
    echo "reload.sh: nothing changed: the running configuration stays" >&2
    exit 1
fi
"$here/render.sh" "$here/templates" "$conf_dir" 2>"$scratch/render.log" || {
    cat "$scratch/render.log" >&2
    exit 1
}
# The workers of nginx's master (PID in the prefix's nginx.pid).
master=$(cat "${prefix%/}/nginx.pid")
workers() {
    awk -v master="$master" '$4 == master { print $1 }' /proc/[0-9]*/stat 2>/dev/null || true
}
before=" $(workers | tr '\n' ' ') "
new_worker() {
    for pid in $(workers); do
        case $before in *" $pid "*) ;; *) return 0 ;; esac
    done
    return 1
}
# Every worker that ran before the reload has begun its graceful exit: nginx
# retitles it "worker process is shutting down" right before it closes its
# listening sockets. Until then it still accepts connections with the old
# configuration (seen: a revoked key still let in right after the reload).
old_stopped_accepting() {
    for pid in $before; do
        title=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
        case $title in
            '' | *"shutting down"*) ;;  # gone, or no longer accepting
            *) return 1 ;;
        esac
    done
    return 0
}
nginx -p "$prefix" -e stderr -c "$conf_dir/nginx.conf" -s reload
# The master answers SIGHUP at once but loads the new configuration after:
# done when a worker it started since is there and the old ones have stopped
# accepting (bounded: 10 s).
tries=0
until new_worker && old_stopped_accepting; do
    tries=$((tries + 1))
    if [ "$tries" -gt 50 ]; then
        echo "reload.sh: ERROR: within 10 s of the reload, nginx started no new worker or an old one kept accepting (see its log)" >&2
        exit 1
    fi
    sleep 0.2
done
echo "reload.sh: nginx reloaded with $(grep -c . "$conf_dir/api-keys.conf" || true) API key(s)" >&2
