#!/usr/bin/env bash
# Soak: device + VNF + replay loop over the UDP wire (no privileges), for MINUTES, with the
# device's and the VNF's resident memory and open file descriptors sampled every 10 s. The VNF
# offloads every flow, sessions close (TCP FIN/RST) or age out (UDP, 2 s), and the VNF reads
# every closed record (follow mode): all the device's paths turn over the whole time.
#
# Usage (after `cargo build --release`):
#   benches/soak.sh [MINUTES] > soak.jsonl      # default 10; one JSON sample per line
# A summary goes to stderr: RSS and fds at start (after the first minute) and end, the slope of
# RSS over the run after the first minute (least squares, MB/min), the device's heap as its
# allocator sees it (held, and free fragments: growth of data vs fragmentation; "held" counts
# the blocks mmapped up front, such as the session table's reserved slabs, touched or not, so it
# can far exceed RSS), and the run's totals.
# SOAK_DEVICE_WRAPPER runs the device under a tool, e.g. SOAK_DEVICE_WRAPPER="heaptrack -o /tmp/dev"
# (then `heaptrack_print -f /tmp/dev.*.zst --print-leaks 1` names what the run left allocated).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
minutes=${1:-10}
opof=$(pwd)/target/release/opof
[ -x "$opof" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() {
  # Children too: a wrapped device is a child of its wrapper.
  for p in "${pids[@]}"; do pkill -INT -P "$p" 2>/dev/null || true; kill -INT "$p" 2>/dev/null || true; done
  if [ -n "${SOAK_DEVICE_WRAPPER:-}" ]; then sleep 5; else sleep 1; fi
  for p in "${pids[@]}"; do
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
d0=$(port); d1=$(port); d2=$(port); d3=$(port); gen=$(port); sink=$(port); va=$(port); vb=$(port)
metrics=127.0.0.1:$(port)

"$opof" gen --out "$work/flows.pcap" --flows 2000 --packets 20 --sizes imix --udp-share 0.5 --ipv6-share 0.3 \
  --rst-share 0.1 --seed 3 --duration 2 2>/dev/null
"$opof" vnf --listen 127.0.0.1:0 --auto-activate \
  --port "a=udp:127.0.0.1:$d2,bind=127.0.0.1:$va" --port "b=udp:127.0.0.1:$d3,bind=127.0.0.1:$vb" \
  >"$work/vnf.out" 2>"$work/vnf.log" &
vnf=$!; pids+=("$vnf")
act=$(listen_addr "$work/vnf.log" "$vnf") || exit 1
${SOAK_DEVICE_WRAPPER:-} "$opof" device --listen 127.0.0.1:0 --register-with "$act" --udp-timeout 2 --tcp-timeout 2 --metrics "$metrics" \
  --port "ext0=udp:127.0.0.1:$gen,bind=127.0.0.1:$d0" --port "ext1=udp:127.0.0.1:$sink,bind=127.0.0.1:$d1" \
  --port "vnf0=udp:127.0.0.1:$va,bind=127.0.0.1:$d2" --port "vnf1=udp:127.0.0.1:$vb,bind=127.0.0.1:$d3" \
  >/dev/null 2>"$work/device.log" &
device=$!; pids+=("$device")
for _ in $(seq 100); do grep -q 'offloading to the activated device' "$work/vnf.log" && break; sleep 0.1; done
# The sink: a socket that reads and drops what reaches ext1's far end.
python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', $sink))
while True: s.recv(65536)" &
pids+=($!)
# The replay loop: the capture (2 s of 2,000 flows) again and again, in real time.
( while true; do "$opof" replay "$work/flows.pcap" --to "udp:127.0.0.1:$d0,bind=127.0.0.1:$gen" >/dev/null 2>&1 || true; done ) &
pids+=($!)

echo "soak: $minutes min, device pid $device, VNF pid $vnf; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
sample() { # PID -> "rss_kb fds"
  echo "$(awk '/VmRSS/ {print $2}' "/proc/$1/status") $(ls "/proc/$1/fd" | wc -l)"
}
start=$(date +%s)
end=$((start + minutes * 60))
while [ "$(date +%s)" -lt "$end" ]; do
  t=$(( $(date +%s) - start ))
  read -r drss dfd < <(sample "$device")
  read -r vrss vfd < <(sample "$vnf")
  m=$(python3 -c "
import urllib.request
t = urllib.request.urlopen('http://$metrics/metrics').read().decode()
pick = lambda p: sum(int(float(l.rsplit(' ', 1)[1])) for l in t.splitlines() if l.startswith(p))
print(pick('opof_sessions '), pick('opof_sessions_added_total'), pick('opof_sessions_closed_total'), pick('opof_closed_queue_depth'), pick('opof_port_rx_frames_total'), pick('opof_process_heap_in_use_bytes') // 1024, pick('opof_process_heap_free_bytes') // 1024)")
  read -r sessions added closed queued frames heap free <<<"$m"
  echo "{\"t_s\": $t, \"device_rss_kb\": $drss, \"device_heap_kb\": $heap, \"device_heap_free_kb\": $free, \"device_fds\": $dfd, \"vnf_rss_kb\": $vrss, \"vnf_fds\": $vfd, \"sessions\": $sessions, \"added\": $added, \"closed\": $closed, \"closed_queued\": $queued, \"frames\": $frames}" | tee -a "$work/samples.jsonl"
  sleep 10
done
python3 - "$work/samples.jsonl" <<'PY' >&2
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
after = [r for r in rows if r["t_s"] >= 60] or rows
def slope(key):
    xs = [r["t_s"] / 60 for r in after]; ys = [r[key] / 1024 for r in after]
    n = len(xs)
    if n < 2: return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    d = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / d if d else 0.0
a, z = after[0], rows[-1]
for who in ("device", "vnf"):
    print(f"{who}: RSS {a[who + '_rss_kb'] / 1024:.1f} MB at {a['t_s']} s -> {z[who + '_rss_kb'] / 1024:.1f} MB at {z['t_s']} s "
          f"(slope {slope(who + '_rss_kb'):+.3f} MB/min after the first minute); fds {a[who + '_fds']} -> {z[who + '_fds']}")
print(f"device heap held (blocks mmapped up front included, touched or not) {a['device_heap_kb'] / 1024:.1f} -> {z['device_heap_kb'] / 1024:.1f} MB (slope {slope('device_heap_kb'):+.3f} MB/min), "
      f"allocator's free {a['device_heap_free_kb'] / 1024:.1f} -> {z['device_heap_free_kb'] / 1024:.1f} MB (slope {slope('device_heap_free_kb'):+.3f} MB/min)")
print(f"sessions added {z['added']:,}, closed {z['closed']:,}, frames {z['frames']:,}; closed records queued at the end {z['closed_queued']}")
PY
