#!/usr/bin/env bash
# Local STAND-INS for the base images our Dockerfile and compose file name, for
# machines that reach no image registry (ours reach only PyPI and Debian).
# They are never tagged with an official image's name: all live under
# ray-llm-standin/, and you pass them in explicitly (build args such as CPU_BASE_IMAGE, UV_IMAGE, NGINX_BASE_IMAGE).
#   tools/standin-images.sh build   build the missing ones (idempotent)
#   tools/standin-images.sh names   print STANDIN_*_IMAGE=... lines
# Needs DOCKER_HOST pointing at an engine with buildx, e.g.
#   eval "$(tools/docker-engine.sh start)"
#
#   ray-llm-standin/debian:bookworm-minbase  debootstrap minbase of Debian 12
#   ray-llm-standin/uv:<version>             just /uv and /uvx (PyPI's uv wheel)
#   ray-llm-standin/nginx:debian             Debian nginx-light + envsubst + wget
#   ray-llm-standin/prometheus:debian        Debian's Prometheus (PROMETHEUS_IMAGE)
#   ray-llm-standin/nginx-exporter:debian    Debian's prometheus-nginx-exporter
# Downloads are cached under $RAY_LLM_CACHE_DIR/standins/ (outside the clone):
# delete a file there to rebuild it from scratch.
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

# Same definition as tools/docker-engine.sh.
RAY_LLM_CACHE_DIR="${RAY_LLM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ray-llm-serve}"
STANDIN_DIR="$RAY_LLM_CACHE_DIR/standins"

# uv: the version our Dockerfile's UV_IMAGE names; if PyPI lacks it, the newest
# of the same minor series is taken (and printed).
UV_VERSION_WANTED="${UV_STANDIN_VERSION:-0.13.9}"
DEBIAN_SUITE=bookworm
DEBIAN_IMAGE="ray-llm-standin/debian:$DEBIAN_SUITE-minbase"
STANDIN_NGINX_TAG="ray-llm-standin/nginx:debian"
STANDIN_PROMETHEUS_TAG="ray-llm-standin/prometheus:debian"
STANDIN_NGINX_EXPORTER_TAG="ray-llm-standin/nginx-exporter:debian"
STANDINS_DIR="$REPO_ROOT/tools/standins"
UV_IMAGE_REPO="ray-llm-standin/uv"
DEBIAN_TARBALL="$STANDIN_DIR/debian-$DEBIAN_SUITE-minbase.tar"
# Labels our images carry, so a changed recipe is rebuilt.
RECIPE_LABEL=ray-llm-standin.recipe-sha256

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}


image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

image_label() {
  docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null
}

# up_to_date IMAGE SHA: the image exists and was built from this recipe.
up_to_date() {
  image_exists "$1" && [[ "$(image_label "$1" "$RECIPE_LABEL")" == "$2" ]]
}

check_engine() {
  [[ -n "${DOCKER_HOST:-}" ]] ||
    log_warn "DOCKER_HOST is not set; using the docker CLI's default engine"
  docker info --format '{{.ServerVersion}}' >/dev/null 2>&1 ||
    die "no Docker engine answers at ${DOCKER_HOST:-the default socket}; start one: eval \"\$(tools/docker-engine.sh start)\""
  docker buildx version >/dev/null 2>&1 ||
    die "docker buildx is missing; run: tools/docker-engine.sh install"
}

# --- debian ---------------------------------------------------------------------

ensure_debootstrap() {
  command -v debootstrap >/dev/null 2>&1 && return 0
  ((EUID == 0)) || die "debootstrap is missing and installing it needs root"
  log_info "installing debootstrap from Debian"
  local policy
  # Captured, not piped into `grep -q`: that fails under pipefail (SIGPIPE).
  policy="$(apt-cache policy debootstrap 2>/dev/null)" || true
  grep -q 'Candidate: [0-9]' <<<"$policy" || apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
}

# write_rootfs_config ROOTFS MIRROR SECURITY_MIRROR: apt sources, and the
# policy-rc.d Debian's own images carry (no service starts in a build).
write_rootfs_config() {
  local rootfs="$1" mirror="$2" security="$3"
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $DEBIAN_SUITE main
deb $mirror $DEBIAN_SUITE-updates main
deb $security $DEBIAN_SUITE-security main
EOF
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  # Updates and security fixes, as Debian's own images have them (debootstrap
  # takes only the release). debootstrap copied the host's resolv.conf in.
  chroot "$rootfs" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get -y -qq upgrade >&2
  chroot "$rootfs" apt-get clean
  # Docker manages these at run time; leave them empty like Debian's images.
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log \
    "$rootfs"/tmp/* "$rootfs"/var/tmp/*
}

# make_debian_tarball: debootstrap once, keep the tar under STANDIN_DIR.
make_debian_tarball() {
  [[ -s "$DEBIAN_TARBALL" ]] && {
    log_info "cached rootfs: $DEBIAN_TARBALL"
    return 0
  }
  ensure_debootstrap
  local mirror security work began=$SECONDS
  mirror="$(debian_mirror)"
  security="$(debian_mirror security)"
  # A half-made rootfs of an interrupted run is useless: start clean.
  find "$STANDIN_DIR" -maxdepth 1 -name 'rootfs.*' -type d -exec rm -rf {} +
  work="$(mktemp -d "$STANDIN_DIR/rootfs.XXXXXX")"
  log_info "debootstrap --variant=minbase $DEBIAN_SUITE from $mirror (takes about 30 s)"
  debootstrap --variant=minbase "$DEBIAN_SUITE" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap failed"
  }
  write_rootfs_config "$work/rootfs" "$mirror" "$security"
  tar -C "$work/rootfs" --numeric-owner -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$DEBIAN_TARBALL"
  rm -rf "$work"
  log_info "rootfs made in $((SECONDS - began))s: $DEBIAN_TARBALL ($(du -h "$DEBIAN_TARBALL" | cut -f1))"
}

build_debian() {
  local sha
  make_debian_tarball
  sha="$(sha256sum <"$DEBIAN_TARBALL" | cut -d' ' -f1)"
  if up_to_date "$DEBIAN_IMAGE" "$sha"; then
    log_info "present: $DEBIAN_IMAGE"
    return 0
  fi
  log_info "importing $DEBIAN_IMAGE"
  docker import \
    --change "LABEL $RECIPE_LABEL=$sha" \
    --change 'LABEL org.opencontainers.image.description="ray-llm-serve local stand-in: debootstrap minbase of Debian 12, not the official debian image"' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    "$DEBIAN_TARBALL" "$DEBIAN_IMAGE" >/dev/null
}

# --- uv -------------------------------------------------------------------------

wheel_platform() {
  case "$(uname -m)" in
    x86_64 | amd64) echo musllinux_1_1_x86_64 ;;
    aarch64 | arm64) echo musllinux_1_1_aarch64 ;;
    *) die "no uv wheel platform known for $(uname -m)" ;;
  esac
}

# uv_download VERSION DIR: PyPI's static (musl) uv wheel, as the official
# image ships the static binary.
uv_download() {
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
    --platform "$(wheel_platform)" --dest "$2" "uv==$1" >&2
}

# uv_version: UV_VERSION_WANTED if PyPI has it, else the newest X.Y.* release.
uv_version() {
  if [[ -n "$(find "$STANDIN_DIR/uv-$UV_VERSION_WANTED" -name 'uv-*.whl' 2>/dev/null)" ]]; then
    echo "$UV_VERSION_WANTED"
    return 0
  fi
  local series="${UV_VERSION_WANTED%.*}" listing newest
  # Captured first: `pip ... | grep -q` would fail under pipefail (SIGPIPE).
  listing="$(python3 -m pip index versions uv 2>/dev/null | sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ')" ||
    die "cannot list uv's versions on PyPI"
  if grep -qxF "$UV_VERSION_WANTED" <<<"$listing"; then
    echo "$UV_VERSION_WANTED"
    return 0
  fi
  newest="$(grep -E "^${series//./\\.}\.[0-9]+$" <<<"$listing" | sort -V | tail -n 1)" || true
  [[ -n "$newest" ]] || die "PyPI has neither uv $UV_VERSION_WANTED nor any uv $series.x"
  log_warn "PyPI has no uv $UV_VERSION_WANTED; using the newest $series.x: $newest"
  echo "$newest"
}

build_uv() {
  local version dir wheel image sha
  version="$(uv_version)"
  image="$UV_IMAGE_REPO:$version"
  log_info "uv for the stand-in: $version (wanted $UV_VERSION_WANTED)"
  dir="$STANDIN_DIR/uv-$version"
  mkdir -p "$dir"
  wheel="$(find "$dir" -maxdepth 1 -name 'uv-*.whl' | head -n 1)"
  if [[ -z "$wheel" ]]; then
    log_info "downloading uv $version from PyPI"
    uv_download "$version" "$dir"
    wheel="$(find "$dir" -maxdepth 1 -name 'uv-*.whl' | head -n 1)"
    [[ -n "$wheel" ]] || die "pip downloaded no uv wheel into $dir"
  fi
  sha="$(sha256sum <"$wheel" | cut -d' ' -f1)"
  printf '%s\n' "$image" >"$STANDIN_DIR/uv-image"
  if up_to_date "$image" "$sha"; then
    log_info "present: $image"
    return 0
  fi
  rm -rf "$dir/root"
  mkdir -p "$dir/root"
  python3 - "$wheel" "$dir/root" <<'PY'
import sys, zipfile, pathlib
wheel, out = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.endswith(("/scripts/uv", "/scripts/uvx")):
            target = out / name.rsplit("/", 1)[1]
            target.write_bytes(zf.read(name))
            target.chmod(0o755)
PY
  [[ -x "$dir/root/uv" ]] || die "no uv binary in $wheel"
  "$dir/root/uv" --version >&2
  log_info "importing $image"
  tar -C "$dir/root" --owner=0 --group=0 --numeric-owner -c . |
    docker import \
      --change "LABEL $RECIPE_LABEL=$sha" \
      --change "LABEL org.opencontainers.image.description=\"ray-llm-serve local stand-in: uv $version from PyPI, not ghcr.io/astral-sh/uv\"" \
      --change 'ENTRYPOINT ["/uv"]' \
      - "$image" >/dev/null
}

uv_image() {
  if [[ -s "$STANDIN_DIR/uv-image" ]]; then
    cat "$STANDIN_DIR/uv-image"
  else
    printf '%s:%s\n' "$UV_IMAGE_REPO" "$UV_VERSION_WANTED"
  fi
}

# --- images from a Dockerfile on the Debian stand-in --------------------------

# build_on_debian TAG DOCKERFILE: build unless the recipe (Dockerfile + base
# image) is unchanged.
build_on_debian() {
  local tag="$1" dockerfile="$2" sha base_id
  [[ -f "$dockerfile" ]] || die "missing $dockerfile"
  base_id="$(docker image inspect --format '{{.Id}}' "$DEBIAN_IMAGE")"
  sha="$({ sha256sum <"$dockerfile"; echo "$base_id"; } | sha256sum | cut -d' ' -f1)"
  if up_to_date "$tag" "$sha"; then
    log_info "present: $tag"
    return 0
  fi
  log_info "building $tag from $DEBIAN_IMAGE"
  # The folder holds only Dockerfiles: a tiny build context.
  docker build --progress plain \
    --file "$dockerfile" \
    --build-arg "BASE_IMAGE=$DEBIAN_IMAGE" \
    --label "$RECIPE_LABEL=$sha" \
    --tag "$tag" \
    "$(dirname "$dockerfile")" >&2
}

build_nginx() { build_on_debian "$STANDIN_NGINX_TAG" "$STANDINS_DIR/nginx.Dockerfile"; }
build_prometheus() { build_on_debian "$STANDIN_PROMETHEUS_TAG" "$STANDINS_DIR/prometheus.Dockerfile"; }
build_nginx_exporter() { build_on_debian "$STANDIN_NGINX_EXPORTER_TAG" "$STANDINS_DIR/nginx-exporter.Dockerfile"; }

# --- commands -------------------------------------------------------------------

cmd_names() {
  printf 'STANDIN_DEBIAN_IMAGE=%s\n' "$DEBIAN_IMAGE"
  printf 'STANDIN_UV_IMAGE=%s\n' "$(uv_image)"
  printf 'STANDIN_NGINX_IMAGE=%s\n' "$STANDIN_NGINX_TAG"
  printf 'STANDIN_PROMETHEUS_IMAGE=%s\n' "$STANDIN_PROMETHEUS_TAG"
  printf 'STANDIN_NGINX_EXPORTER_IMAGE=%s\n' "$STANDIN_NGINX_EXPORTER_TAG"
}

timed() {
  local began=$SECONDS
  "$@"
  log_info "$1: $((SECONDS - began))s"
}

cmd_build() {
  check_engine
  mkdir -p "$STANDIN_DIR"
  timed build_debian
  timed build_uv
  timed build_nginx
  timed build_prometheus
  timed build_nginx_exporter
  log_info "stand-in images:"
  docker image ls --filter 'reference=ray-llm-standin/*' \
    --format '  {{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' >&2
  cmd_names
}

main() {
  (($# == 1)) || usage
  case "$1" in
    build) cmd_build ;;
    names) cmd_names ;;
    *) usage ;;
  esac
}

main "$@"
