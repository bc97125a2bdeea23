#!/usr/bin/env bash
# Replayer throughput per port type, against tcpreplay on the same interfaces, alternating in
# the same run. 64-byte frames, as fast as possible, one core's worth of sender.
#
# Usage (as root, after `cargo build --release`; needs iproute2, tcpreplay, python3):
#   benches/replay.sh [REPS] > replay.jsonl      # one JSON object per measurement
#
# Interfaces live in a network namespace made for the run (opof-bench): a veth pair
# (frames sent on veth0 arrive on veth1 and are dropped there) and a TAP device. The UDP wire
# sends to a socket that never reads (the kernel drops what its buffer cannot hold; the sender
# is what is measured). tcpreplay has no UDP-wire equivalent.
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
loops=${LOOPS:-10}
opof=target/release/opof
[ -x "$opof" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace, veth, TAP)" >&2; exit 1; }
command -v tcpreplay >/dev/null || { echo "needs tcpreplay (Debian package tcpreplay)" >&2; exit 1; }

ns=opof-bench
work=$(mktemp -d)
cleanup() {
  [ -f "$work/sink.pid" ] && kill "$(cat "$work/sink.pid")" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add veth0 type veth peer name veth1
ip -n "$ns" link set veth0 up
ip -n "$ns" link set veth1 up
ip -n "$ns" tuntap add tap0 mode tap
ip -n "$ns" link set tap0 up

cap="$work/64.pcap"
"$opof" gen --out "$cap" --flows 2000 --packets 20 --sizes 64 --udp-share 1 --ipv6-share 0 --seed 7 2>/dev/null
frames=$(tcpdump -nn -r "$cap" 2>/dev/null | wc -l)
echo "capture: $frames frames of 64 bytes, $loops loops per measurement, $reps repetitions" >&2

ip netns exec "$ns" python3 -c '
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 47999))
time.sleep(10**6)' &
echo $! > "$work/sink.pid"
sleep 0.5

opof_run() { # port-name spec
  local json
  json=$(ip netns exec "$ns" "$opof" replay "$cap" --to "$2" --fast --loops "$loops" 2>/dev/null)
  python3 -c "
import json, sys
s = json.loads(sys.argv[1])
print(json.dumps({'tool': 'opof replay', 'port': sys.argv[2], 'frames': s['frames'], 'dropped': s['dropped'],
                  'seconds': round(s['seconds'], 4), 'pps': round(s['frames_per_second'])}))" "$json" "$1"
}

tcpreplay_run() { # port-name interface
  local out
  out=$(ip netns exec "$ns" tcpreplay -q -i "$2" --topspeed --loop "$loops" "$cap" 2>&1)
  python3 -c "
import json, re, sys
t = sys.argv[1]
pps = re.search(r'([0-9.]+) pps', t)
sent = re.search(r'Successful packets:\s+([0-9]+)', t)
failed = re.search(r'Failed packets:\s+([0-9]+)', t)
secs = re.search(r'packets \(([0-9]+)? ?bytes\) sent in ([0-9.]+) seconds', t) or re.search(r'sent in ([0-9.]+) seconds', t)
print(json.dumps({'tool': 'tcpreplay', 'port': sys.argv[2], 'frames': int(sent.group(1)) if sent else None,
                  'dropped': int(failed.group(1)) if failed else None, 'pps': round(float(pps.group(1))) if pps else None}))" "$out" "$1"
}

for _ in $(seq "$reps"); do
  opof_run afpacket afpacket:veth0
  tcpreplay_run afpacket veth0
  opof_run tap tap:tap0
  tcpreplay_run tap tap0
  opof_run udp udp:127.0.0.1:47999
done
