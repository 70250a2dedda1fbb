#!/bin/sh
# secret-file.sh NAME DEST UID:GID [REQUIRED...]
#
# For third-party containers that read a secret from a file of its own
# (Grafana's GF_SECURITY_ADMIN_PASSWORD__FILE, cloudflared's --token-file):
# copies the value of NAME from the mounted .secrets ($RAY_LLM_SECRETS_FILE,
# dotenv.sh's rules) into DEST, mode 0400, owned by UID:GID. The value is
# never printed. Exits 1, naming the variable, when NAME or any REQUIRED name
# is empty: nothing is written then. A REQUIRED argument may list
# alternatives separated by '|', each a name or a pattern ("OPENAI_API_KEY|API_KEY_*"):
# one of them must be set. Compose runs it as a one-shot service in
# the project's nginx image, and the consumer waits for it
# (depends_on: service_completed_successfully).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=docker/nginx/dotenv.sh
. "$here/dotenv.sh"

usage() {
    echo "Usage: secret-file.sh NAME DEST UID:GID [REQUIRED...]" >&2
    exit 2
}

[ $# -ge 3 ] || usage
name=$1 dest=$2 owner=$3
shift 3
secrets=${RAY_LLM_SECRETS_FILE:-}
if [ -z "$secrets" ] || [ ! -r "$secrets" ]; then
    echo "secret-file.sh: ERROR: cannot read the secrets file '$secrets' (RAY_LLM_SECRETS_FILE): mount .secrets there" >&2
    exit 1
fi

found=
collect() {
    [ -z "$2" ] || found="$found $1"
    if [ "$1" = "$name" ]; then
        secret_value=$2
    fi
}
secret_value=
ray_llm_dotenv_each "$secrets" collect

# is_set ALTERNATIVES: one of the '|'-separated names or patterns is set.
is_set() {
    old_ifs=$IFS
    IFS='|'
    # shellcheck disable=SC2086  # split on '|' on purpose
    set -- $1
    IFS=$old_ifs
    for alternative in "$@"; do
        for set_name in $found; do
            # shellcheck disable=SC2254  # a pattern on purpose
            case $set_name in $alternative) return 0 ;; esac
        done
    done
    return 1
}

for required in "$name" "$@"; do
    if ! is_set "$required"; then
        echo "secret-file.sh: ERROR: $(printf '%s' "$required" | sed 's/|/ or /g') is empty in .secrets; set it there (see .secrets.example)" >&2
        exit 1
    fi
done

umask 077
mkdir -p "$(dirname "$dest")"
tmp="$dest.tmp.$$"
printf '%s' "$secret_value" >"$tmp"
chown "$owner" "$tmp"
chmod 0400 "$tmp"
mv -f "$tmp" "$dest"
echo "secret-file.sh: wrote $name to $dest" >&2
