#!/usr/bin/env bash
# Recompile the pinned locks from their .in files.
#   tools/lock.sh          rewrite requirements.txt and requirements-*.txt
#   tools/lock.sh --check  recompile into a temp dir and fail if any lock differs
set -Eeuo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

# The exact commands. Each lock's header repeats its command (uv writes it).
compile_gpu() { # $1 = output, $2 = platform
  uv pip compile requirements.in --python-version 3.12 \
    --python-platform "$2" --generate-hashes --quiet -o "$1"
}
compile_cpu() {
  uv pip compile requirements-cpu.in --override overrides-cpu.txt \
    --find-links "$TORCH_CPU_FIND_LINKS" --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --generate-hashes --quiet -o "$1"
}
compile_dev() {
  uv pip compile requirements-dev.in -c requirements-cpu.txt --find-links "$TORCH_CPU_FIND_LINKS" \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --generate-hashes --quiet -o "$1"
}

# Package pins only (name==version lines), without uv's header or comments.
pins() { grep -E '^[A-Za-z0-9]' "$1"; }

main() {
  cd "$REPO_ROOT"
  export UV_PYTHON_DOWNLOADS=never
  local mode="${1:-write}"
  if [[ "$mode" == "--check" ]]; then
    LOCK_TMP="$(mktemp -d)"
    trap 'rm -rf "$LOCK_TMP"' EXIT
    local out="$LOCK_TMP"
    # Work in a copy so uv's header names the same relative output paths. The
    # current locks go along: uv keeps their pins while they still satisfy the
    # .in files, so a new upstream release alone never makes the check fail.
    cp requirements*.in overrides-cpu.txt requirements.txt requirements-cpu.txt requirements-dev.txt "$out/"
    cp requirements.txt "$out/requirements-aarch64.txt"
    ( cd "$out"
      compile_gpu requirements.txt x86_64-manylinux_2_35
      compile_gpu requirements-aarch64.txt aarch64-manylinux_2_35
      compile_cpu requirements-cpu.txt
      compile_dev requirements-dev.txt )
    local failed=0 f
    for f in requirements.txt requirements-cpu.txt requirements-dev.txt; do
      if ! diff -u "$f" "$out/$f"; then
        log_error "$f is out of date with its .in file: run tools/lock.sh"
        failed=1
      fi
    done
    if ! diff -u <(pins requirements.txt) <(pins "$out/requirements-aarch64.txt"); then
      log_error "aarch64 resolves to different pins than x86_64; requirements.txt cannot serve both"
      failed=1
    fi
    # The image installs wheels only: every pin must have one on both platforms.
    local platform
    for platform in x86_64-manylinux_2_35 aarch64-manylinux_2_35; do
      cp requirements.txt "$out/wheels-$platform.txt"
      if ! (cd "$out" && uv pip compile requirements.in --python-version 3.12 --python-platform "$platform" \
        --only-binary :all: --quiet -o "wheels-$platform.txt") ||
        ! diff -u <(pins requirements.txt | sed 's/ *\\$//') <(pins "$out/wheels-$platform.txt" | sed 's/ *\\$//'); then
        log_error "some pins of requirements.txt have no wheel for $platform (the image builds wheels only)"
        failed=1
      fi
    done
    (( failed == 0 )) && log_info "locks are up to date (x86_64 and aarch64 agree)"
    return "$failed"
  fi
  compile_gpu requirements.txt x86_64-manylinux_2_35
  compile_cpu requirements-cpu.txt
  compile_dev requirements-dev.txt
  log_info "locks written"
}

main "$@"
