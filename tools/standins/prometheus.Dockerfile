# Local STAND-IN for the Prometheus image (PROMETHEUS_IMAGE, officially
# prom/prometheus), built by tools/standin-images.sh on machines that reach
# no image registry. Debian's Prometheus 2.42, not the official image, and
# never tagged as one (repository ray-llm-standin/). Like the official image:
# the binary as entry point, user nobody, data in /prometheus, wget for the
# healthcheck.
ARG BASE_IMAGE=ray-llm-standin/debian:bookworm-minbase
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown 65534:65534 /prometheus

LABEL org.opencontainers.image.description="ray-llm-serve local stand-in: Debian 12 prometheus, not the official prom/prometheus image"
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
