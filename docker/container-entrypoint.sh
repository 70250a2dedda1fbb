#!/bin/sh
# Entry point of the serving image: runs CMD as the app user (APP_USER, uid
# 10001), never as root.
#
# Compose mounts .secrets read-only at /run/secrets/ray-llm (a Compose
# secret, so no secret value is in the container's configuration, which
# `docker inspect` shows). That file keeps the host's owner and mode 0600, so
# the app user cannot read it. Compose therefore starts this container as root:
# this script copies the lines the model server needs (SERVER_SECRETS below:
# the Hugging Face token and Ray's token, nothing of Nginx's, the tunnel's or
# Grafana's) to a private tmpfs owned by the app user (/run/ray-llm/secrets),
# points RAY_LLM_SECRETS_FILE at it, and drops to the app user before CMD runs. Started as the app user already (plain
# `docker run`), it only does the last part.
#
# As PID 1 it runs CMD under tini (SIGTERM reaches uv run, which passes it to
# deploy.py; zombies are reaped); as anything else (the healthcheck, `docker exec`) it runs CMD as is.
set -eu

mounted=/run/secrets/ray-llm
private_dir=/run/ray-llm
private="$private_dir/secrets"
app_user="${APP_USER:-ray}"
# The names of deploy.py's SERVER_SECRETS (tests/unit/test_secrets_files.py
# keeps the two lists equal).
SERVER_SECRETS='HF_TOKEN|HUGGING_FACE_HUB_TOKEN|HUGGINGFACE_TOKEN|RAY_AUTH_TOKEN|AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY'

if [ "$(id -u)" = 0 ]; then
    if [ -f "$mounted" ]; then
        # Read as root, written by the app user: the copy is the app user's.
        # Only SERVER_SECRETS lines (the project's dotenv values are one line).
        # Atomic (rename), so a healthcheck running this never leaves a half file.
        # shellcheck disable=SC2016  # $1 belongs to the inner sh
        grep -E "^[[:space:]]*(export[[:space:]]+)?($SERVER_SECRETS)=" "$mounted" |
            setpriv --reuid="$app_user" --regid="$app_user" --init-groups -- \
                sh -c 'umask 077 && cat >"$1.new" && mv -f "$1.new" "$1"' sh "$private"
    fi
    # setpriv keeps the environment: HOME must be the app user's (caches).
    HOME=$(getent passwd "$app_user" | cut -d: -f6)
    USER=$app_user
    LOGNAME=$app_user
    export HOME USER LOGNAME
    exec setpriv --reuid="$app_user" --regid="$app_user" --init-groups -- "$0" "$@"
fi

if [ -f "$private" ]; then
    export RAY_LLM_SECRETS_FILE="$private"
elif [ -r "$mounted" ]; then
    export RAY_LLM_SECRETS_FILE="$mounted"
fi

if [ "$$" = 1 ]; then
    # Not `tini -g`: signalling the whole process group would hit Ray's own
    # daemons along with deploy.py and cut its graceful drain (seen in the
    # Compose test: the drain never finished). deploy.py stops them itself.
    exec tini -- "$@"
fi
exec "$@"
