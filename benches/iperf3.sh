#!/usr/bin/env bash
# TCP bulk traffic between two real Linux hosts (network namespaces, default offloads left on:
# checksum offload, TSO/GSO) through the device, side by side with a Linux bridge, alternating
# in the same run. iperf3 (Debian's package) is client and server.
#
# Usage (as root, after `cargo build --release`; needs iproute2, iperf3, python3, taskset):
#   benches/iperf3.sh [REPS] [SECONDS] > iperf3.jsonl    # one JSON object per measurement
#
#   ns opof-i1 (10.88.0.1) ── h1|d1 ──[ switch ns opof-isw ]── d2|h2 ── ns opof-i2 (10.88.0.2)
#     bridge   d1 and d2 in a Linux bridge
#     device   opof device on afpacket:d1 / afpacket:d2, its vnf0/vnf1 on veths to opof vnf,
#              which offloads the flow FORWARD after its handshake (the data never meets it)
#
# The device runs on core 1 (taskset); iperf3 and the hosts' kernels where the scheduler puts
# them. The device cuts the hosts' super-frames into wire packets and completes checksums
# (as a NIC between two hosts must), so its figure includes that work; the bridge passes
# super-frames through whole. A summary (medians, Gbit/s) goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
reps=${1:-3}
secs=${2:-5}
opof=$(pwd)/target/release/opof
[ -x "$opof" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, veth)" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "needs iperf3 (apt-get install iperf3)" >&2; exit 1; }

C=opof-i1 SV=opof-i2 W=opof-isw
work=$(mktemp -d)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_all
  for n in $C $SV $W; do
    ip netns pids $n 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del $n 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
for n in $C $SV $W; do
  ip netns del $n 2>/dev/null || true
  ip netns add $n
  ip -n $n link set lo up
done
ip netns exec $W sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n $C link add h1 type veth peer name d1 netns $W
ip -n $SV link add h2 type veth peer name d2 netns $W
ip -n $W link add dv0 type veth peer name va
ip -n $W link add dv1 type veth peer name vb
for i in d1 d2 dv0 va dv1 vb; do ip -n $W link set $i up; done
ip -n $C addr add 10.88.0.1/24 dev h1 && ip -n $C link set h1 up
ip -n $SV addr add 10.88.0.2/24 dev h2 && ip -n $SV link set h2 up
ip netns exec $SV iperf3 -s -D -I "$work/iperf3.pid" >/dev/null
offloads=$(ip netns exec $C ethtool -k h1 2>/dev/null | grep -E '^(tx-checksumming|tcp-segmentation-offload):' | tr -s ' \n' ' ' || true)
echo "hosts' offloads: ${offloads:-unknown (no ethtool)}; ${secs} s per measurement, $reps repetitions; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

measure() { # MODE
  local out
  out=$(ip netns exec $C iperf3 -c 10.88.0.2 -t "$secs" -J 2>/dev/null)
  python3 - "$1" "$out" <<'PY'
import json, sys
mode, out = sys.argv[1], json.loads(sys.argv[2])
end = out["end"]
print(json.dumps({"mode": mode, "gbit_s": round(end["sum_received"]["bits_per_second"] / 1e9, 3),
                  "retransmits": end["sum_sent"].get("retransmits", 0)}))
PY
}

for rep in $(seq "$reps"); do
  # Linux bridge.
  ip -n $W link add br0 type bridge
  ip -n $W link set d1 master br0 && ip -n $W link set d2 master br0 && ip -n $W link set br0 up
  measure bridge
  ip -n $W link del br0
  # The device, with the VNF that offloads the flow.
  ip netns exec $W "$opof" vnf --listen 127.0.0.1:0 --auto-activate --port a=afpacket:va --port b=afpacket:vb \
    >"$work/vnf.out" 2>"$work/vnf.log" &
  pids+=($!)
  act=$(listen_addr "$work/vnf.log" "${pids[-1]}") || exit 1
  ip netns exec $W taskset -c 1 "$opof" device --listen 127.0.0.1:0 --register-with "$act" \
    --port ext0=afpacket:d1 --port ext1=afpacket:d2 --port vnf0=afpacket:dv0 --port vnf1=afpacket:dv1 \
    --metrics 127.0.0.1:9188 >/dev/null 2>"$work/device.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q 'offloading to the activated device' "$work/vnf.log" && break; sleep 0.1; done
  measure device
  stats=$(ip netns exec $W python3 -c '
import urllib.request
t = urllib.request.urlopen("http://127.0.0.1:9188/metrics").read().decode()
pick = lambda p: sum(int(l.rsplit(" ", 1)[1]) for l in t.splitlines() if l.startswith(p))
print(pick("opof_port_rx_superframes_total"), pick("opof_datapath_offloaded_total"), pick("opof_datapath_miss_total"))' 2>/dev/null || echo "? ? ?")
  echo "rep $rep: device super-frames cut, offloaded frames, frames to the VNF: $stats" >&2
  stop_all
done | tee "$work/all.jsonl"

python3 - "$work/all.jsonl" <<'PY' >&2
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
med = {}
for mode in ("bridge", "device"):
    v = sorted(r["gbit_s"] for r in rows if r["mode"] == mode)
    if v:
        med[mode] = statistics.median(v)
        print(f"{mode:7} median {med[mode]:.2f} Gbit/s  range {v[0]:.2f}-{v[-1]:.2f}  (n={len(v)})")
if len(med) == 2:
    print(f"device / bridge: {med['device'] / med['bridge']:.2f}")
PY
