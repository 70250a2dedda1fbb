# Local STAND-IN for the Nginx exporter image (NGINX_EXPORTER_IMAGE,
# officially nginx/nginx-prometheus-exporter), built by
# tools/standin-images.sh on machines that reach no image registry.
# Debian's prometheus-nginx-exporter 0.11, not the official image, and never
# tagged as one (repository ray-llm-standin/). Like the official image: the
# binary as entry point, a non-root user.
ARG BASE_IMAGE=ray-llm-standin/debian:bookworm-minbase
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus-nginx-exporter \
    && rm -rf /var/lib/apt/lists/*

LABEL org.opencontainers.image.description="ray-llm-serve local stand-in: Debian 12 prometheus-nginx-exporter, not the official nginx/nginx-prometheus-exporter image"
USER 65534:65534
EXPOSE 9113
ENTRYPOINT ["/usr/bin/prometheus-nginx-exporter"]
