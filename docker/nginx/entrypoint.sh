#!/bin/sh
# Entry point of the project's nginx image (docker/nginx/Dockerfile): render
# the configuration with render.sh (the same script host runs use) into the
# tmpfs /etc/nginx/conf.d, check it with `nginx -t`, then run CMD (nginx).
# Any bad setting stops the container here, with a message naming it.
set -eu
here=$(dirname "$0")
conf_dir=/etc/nginx/conf.d
"$here/render.sh" "$here/templates" "$conf_dir"
nginx -q -t -p /tmp/ -e stderr -c "$conf_dir/nginx.conf"
exec "$@"
