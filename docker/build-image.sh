#!/usr/bin/env bash
# Builds a Docker image of the reference device from this checkout's own binary, without any
# registry: the release binary and the shared libraries it links (ldd) are packed into a root
# file system and loaded with `docker import`. No base image is pulled.
#
# Usage: docker/build-image.sh [IMAGE]        (default opof-device:dev)
# Run:   docker run --rm -p 50151:50151 IMAGE device --listen 0.0.0.0:50151
# The datapath (a later issue) will need io_uring, which Docker's default seccomp profile
# refuses: run it with --security-opt seccomp=unconfined (or a profile that allows io_uring_*).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-opof-device:dev}
command -v docker >/dev/null || { echo "docker not found" >&2; exit 1; }

echo "building the release binary..." >&2
cargo build --release --bin opof >&2
bin=target/release/opof

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/tmp"
cp "$bin" "$root/usr/local/bin/opof"
# The dynamic loader and every library the binary links, at the same paths.
for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
chmod 1777 "$root/tmp"

tar -C "$root" -c . | docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/opof"]' \
  --change 'CMD ["device", "--listen", "0.0.0.0:50151"]' \
  --change 'EXPOSE 50151' \
  --change 'ENV RUST_LOG=info' \
  - "$image" >/dev/null
echo "$image" 
docker image inspect "$image" --format '{{.Id}} {{.Size}} bytes' >&2
