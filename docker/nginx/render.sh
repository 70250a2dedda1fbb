#!/bin/sh
# render.sh TEMPLATE_DIR OUT_DIR
#
# The one way Nginx's configuration is made, in every mode: the project's
# nginx image runs it at start (docker/nginx/entrypoint.sh), and
# scripts/render-nginx.sh runs it for host runs (scripts/local-stack.sh) and
# the tests. POSIX sh (busybox in the Alpine-based image).
#
#   1. Secrets: when RAY_LLM_SECRETS_FILE names a file (Compose mounts .secrets
#      at /run/secrets/ray-llm), the settings Nginx needs are read from it:
#      the API keys (OPENAI_API_KEY and every API_KEY_<NAME>),
#      NGINX_DASHBOARD_USER, NGINX_DASHBOARD_PASSWORD and RAY_AUTH_TOKEN, by
#      dotenv.sh (the one shell dotenv parser). A variable already set in the
#      environment wins. A name set twice in the file is refused. Nothing else
#      is taken from the file.
#   2. entrypoint.d/05-ray-llm.envsh (next to this file) checks every setting
#      and exports the derived NGINX_* values; a bad value ends everything
#      with exit status 1 and a message naming the variable.
#   3. Every TEMPLATE_DIR/*.template is rendered into OUT_DIR (suffix removed)
#      by envsubst restricted to the names of the variables that are defined,
#      so nginx's own $variables are kept.
#
# The output holds OPENAI_API_KEY and RAY_AUTH_TOKEN: its files are private
# (umask 077).
set -eu

ray_llm_render_usage() {
    echo "Usage: render.sh TEMPLATE_DIR OUT_DIR" >&2
    exit 2
}

# ray_llm_load_secrets FILE: export the secrets Nginx uses from a dotenv file
# (dotenv.sh's rules). A variable already set in the environment wins.
ray_llm_loaded=" "
ray_llm_load_secret() {
    case $1 in
        OPENAI_API_KEY | API_KEY_* | NGINX_DASHBOARD_USER | NGINX_DASHBOARD_PASSWORD | RAY_AUTH_TOKEN) ;;
        *) return 0 ;;
    esac
    case $ray_llm_loaded in
        *" $1 "*)
            echo "render.sh: ERROR: $1 is set twice in the secrets file $RAY_LLM_SECRETS_FILE: keep one line" >&2
            exit 1
            ;;
    esac
    ray_llm_loaded="$ray_llm_loaded$1 "
    # $1 is one of the literal names above, or API_KEY_ and [A-Za-z0-9_]
    # (dotenv.sh passes only such names).
    if [ -z "$(eval "printf '%s' \"\${$1+set}\"")" ]; then
        eval "$1=\$2"
        export "${1?}"
    fi
}

ray_llm_load_secrets() {
    ray_llm_dotenv_each "$1" ray_llm_load_secret
}

ray_llm_render() {
    template_dir=$1
    out_dir=$2
    defined_envs=$(awk 'END { for (name in ENVIRON) printf "${%s} ", name }' </dev/null)
    find "$template_dir" -follow -type f -name '*.template' -print | sort | while IFS= read -r template; do
        relative=${template#"$template_dir/"}
        output="$out_dir/${relative%.template}"
        mkdir -p "$(dirname "$output")"
        envsubst "$defined_envs" <"$template" >"$output"
        echo "render.sh: rendered $output" >&2
    done
}

[ $# -eq 2 ] && [ -n "$1" ] && [ -n "$2" ] || ray_llm_render_usage
umask 077
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=docker/nginx/dotenv.sh
. "$here/dotenv.sh"
if [ -n "${RAY_LLM_SECRETS_FILE:-}" ] && [ -e "$RAY_LLM_SECRETS_FILE" ]; then
    if [ ! -f "$RAY_LLM_SECRETS_FILE" ] || [ ! -r "$RAY_LLM_SECRETS_FILE" ]; then
        echo "render.sh: ERROR: cannot read the secrets file $RAY_LLM_SECRETS_FILE (RAY_LLM_SECRETS_FILE): not a readable file" >&2
        exit 1
    fi
    ray_llm_load_secrets "$RAY_LLM_SECRETS_FILE"
fi
mkdir -p "$2"
NGINX_ENVSUBST_OUTPUT_DIR=$(cd "$2" && pwd)
export NGINX_ENVSUBST_OUTPUT_DIR
# The checks are written for sh without `set -u` (unset means empty).
set +u
# shellcheck source=docker/nginx/entrypoint.d/05-ray-llm.envsh
. "$here/entrypoint.d/05-ray-llm.envsh"
set -u
ray_llm_render "$1" "$NGINX_ENVSUBST_OUTPUT_DIR"
