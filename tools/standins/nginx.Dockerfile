# Local STAND-IN for an nginx base image (NGINX_BASE_IMAGE), built by
# tools/standin-images.sh on machines that reach no image registry. It is not
# the official nginx image and is never tagged as one (repository
# ray-llm-standin/).
#
# Debian's nginx-light (nginx 1.22), gettext-base (envsubst) and wget (the
# healthcheck): what docker/nginx/Dockerfile needs from its base. The project's
# image brings its own entry point (render.sh), so none is emulated here.
#
# No `# syntax=` line on purpose: BuildKit would fetch that frontend from
# Docker Hub and fail offline; the built-in frontend is enough.
ARG BASE_IMAGE=ray-llm-standin/debian:bookworm-minbase
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light gettext-base wget ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log

LABEL org.opencontainers.image.description="ray-llm-serve local stand-in: Debian 12 nginx-light, not the official nginx image"
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
