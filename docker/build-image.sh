#!/usr/bin/env bash
# Builds a Docker image of the reference device from this checkout's own binary, without any
# registry: `opof image build` packs the release binary and the shared libraries it links (ldd)
# into a root file system and loads it with `docker import`. No base image is pulled.
#
# Usage: docker/build-image.sh [IMAGE]        (default opof-device:dev)
# Run:   docker run --rm -p 50151:50151 --security-opt seccomp=unconfined IMAGE device --listen 0.0.0.0:50151
# The datapath (--port ...) runs on io_uring, which Docker's default seccomp profile refuses:
# hence seccomp=unconfined (or a profile that allows io_uring_*).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-opof-device:dev}
command -v docker >/dev/null || { echo "docker not found" >&2; exit 1; }

echo "building the release binary..." >&2
cargo build --release --bin opof >&2
target/release/opof image build --binary target/release/opof --tag "$image"
docker image inspect "$image" --format '{{.Id}} {{.Size}} bytes' >&2
