#!/usr/bin/env bash
# The device's forwarding rate on kernel ports, side by side with Linux and with a bare
# io_uring forwarder, alternating in the same run. 64-byte UDP frames of 2,000 offloaded flows.
#
# Usage (as root, after `cargo build --release`; needs iproute2, tcpdump, python3, taskset):
#   benches/datapath-ports.sh [REPS] > ports.jsonl    # one JSON object per measurement
#   LOOPS=10 RATES="100000 200000 300000 400000" are the defaults; OPOF names the opof binary
#   (default target/release/opof).
#   WORKERS2=1 also measures the device with two datapath workers (mode device-2w: --workers 2,
#   on cores 1 and 2 where the machine has three or more, the generator alone on core 0; on a
#   two-core machine on cores 0 and 1, one worker sharing core 0 with the generator). The
#   summary then judges "two workers ≥ 1.5× one worker" per port, or says why it cannot: the
#   generator shared a core with a worker, or could not offer 1.5× the one-worker peak.
#   With WORKERS2=1 each repetition also has drain runs (one worker, then two; veth, then
#   TAP), which the generator cannot limit: the device, offloaded, is stopped (SIGSTOP); the
#   generator queues DRAIN_LOOPS passes of the capture a worker (default 5: 100,000 frames a
#   worker) as fast as it can and exits; benches/drain.py resumes the device and times the
#   frames reaching the sink over the middle of the drain, DRAIN_RUNS times (default 5) on
#   the same device. The queues are the kernel's, each deep enough for a worker's share: an
#   AF_PACKET socket's receive buffer (`--socket-buffer`, 64 MiB for the run, which the kernel
#   counts as 128: some 160,000 of these frames; the default 4 MiB holds about 10,000, a drain
#   too short to time well), a TAP queue its txqueuelen (raised to 200,000 for the run). The
#   drain rates are the device's own, every worker on a core of its own; the summary judges
#   "two workers ≥ 1.5× one" on their medians. Drained frames come from queues that filled
#   while nothing read them, colder in cache than frames of a steady flow: a drain rate can be
#   under the paced peak of the same device.
#
# Three network namespaces: a generator (opof-g), the device under test (opof-d) and a sink
# (opof-s). The generator is `opof replay` (one core); what the sink receives is counted by
# its interface's rx_packets. Modes, each measured REPS times in turn:
#
#   veth   g0 ==veth== a0 [opof-d] a1 ==veth== s0
#     linux-bridge  a0 and a1 in a Linux bridge
#     linux-route   IPv4 forwarding from a0 to a1 (static route and neighbour)
#     bare          opof device --bare, ports afpacket:a0 and afpacket:a1 (no parsing, no lookup)
#     device        opof device, afpacket:a0 / afpacket:a1, every flow offloaded FORWARD
#   tap    t0 (kernel side in opof-g) ==TAP fd== [opof-d] ==TAP fd== t1 (kernel side in opof-s)
#     bare / device as above, on tap:t0 and tap:t1
#
# The generator runs on core 0 and the forwarder on core 1 (taskset). bare and device are
# offered paced rates (RATES, frames/s) and then as much as the generator can send ("max"):
# the best delivered rate is the forwarder's peak; "max" offered above the peak is the
# overload, and what it delivers there, as a share of the peak, says whether it livelocks.
# In the Linux modes the kernel forwards in the generator's own context (core 0).
#
# Linux cannot forward between two TAP devices without a user-space process (the TAP file
# descriptors are the forwarder), so the TAP figures compare with the bare forwarder, and the
# ratio to Linux is taken against the veth figures. A summary table (medians) goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
reps=${1:-3}
loops=${LOOPS:-10}
drain_loops=${DRAIN_LOOPS:-5}
drain_runs=${DRAIN_RUNS:-5}
drain_socket_buffer=$((64 << 20))
drain_txqueuelen=200000
for v in "$drain_loops" "$drain_runs"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "DRAIN_LOOPS and DRAIN_RUNS must be positive numbers" >&2; exit 2; }
done
rates=${RATES:-100000 200000 300000 400000}
opof=$(realpath -m "${OPOF:-target/release/opof}")
[ -x "$opof" ] || { echo "$opof: not found; build first: cargo build --release" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, veth, TAP)" >&2; exit 1; }
command -v tcpdump >/dev/null || { echo "needs tcpdump" >&2; exit 1; }

G=opof-g D=opof-d S=opof-s
work=$(mktemp -d)
device_pid=
stop_device() {
  if [ -n "$device_pid" ]; then
    # A drain run stops the device; a stopped process acts on SIGINT only once resumed.
    kill -CONT "$device_pid" 2>/dev/null || true
    kill -INT "$device_pid" 2>/dev/null || true
    # A device that does not stop within 10 s is killed: the script never hangs on one.
    for _ in $(seq 100); do kill -0 "$device_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$device_pid" 2>/dev/null && echo "device $device_pid did not stop on SIGINT: killed" >&2
    wait "$device_pid" 2>/dev/null || true
    device_pid=
  fi
}
cleanup() {
  stop_device
  for n in $G $D $S; do ip netns del $n 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for n in $G $D $S; do
  ip netns del $n 2>/dev/null || true
  ip netns add $n
  ip -n $n link set lo up
  ip netns exec $n sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip -n $G link add g0 type veth peer name a0 netns $D
ip -n $S link add s0 type veth peer name a1 netns $D
for i in "$G g0" "$D a0" "$D a1" "$S s0"; do set -- $i; ip -n "$1" link set "$2" up; done
a0_mac=$(ip -n $D -j link show a0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])')
s0_mac=$(ip -n $S -j link show s0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])')

# Client-to-server frames only (one destination MAC, so the routed mode can take them all).
"$opof" gen --out "$work/both.pcap" --flows 2000 --packets 20 --sizes 64 --udp-share 1 --ipv6-share 0 --seed 7 2>/dev/null
tcpdump -r "$work/both.pcap" -w "$work/64.pcap" ether dst 02:00:00:00:00:02 2>/dev/null
frames=$(tcpdump -nn -r "$work/64.pcap" 2>/dev/null | wc -l)
# The capture's time span, seconds (for pacing at a given rate).
span=$(python3 "$(dirname "$0")/pcap-span.py" "$work/64.pcap")
echo "capture: $frames frames of 64 bytes over $span s, $loops loops per measurement, $reps repetitions; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

rx() { ip netns exec "$S" cat "/sys/class/net/$1/statistics/rx_packets"; }

# measure MODE PORT SINK_IF GEN_IF RATE: RATE frames/s, or "max" (as fast as the generator can).
measure() {
  local mode=$1 port=$2 sink=$3 gif=$4 rate=$5 before after pace
  if [ "$rate" = max ]; then
    pace=(--fast)
  else
    pace=(--speed "$(python3 -c "print($rate * $span / $frames)")")
  fi
  before=$(rx "$sink")
  ip netns exec $G taskset -c 0 "$opof" replay "$work/64.pcap" --to "afpacket:$gif" "${pace[@]}" --loops "$loops" \
    > "$work/gen.json" 2>/dev/null
  sleep 0.5
  after=$(rx "$sink")
  python3 -c '
import json, sys
mode, port, rate, delivered = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
r = json.load(open(sys.argv[5]))
sent, secs = r["frames"], r["seconds"]
print(json.dumps({"port": port, "mode": mode, "rate": rate, "sent": sent,
                  "offered_fps": round(sent / secs), "delivered": delivered,
                  "delivered_fps": round(delivered / secs), "delivered_share": round(delivered / max(sent, 1), 4)}))
' "$mode" "$port" "$rate" "$((after - before))" "$work/gen.json" | tee -a "$work/all.jsonl"
}

# measure_rates MODE PORT SINK_IF GEN_IF: every paced rate, then max.
measure_rates() {
  for r in $rates max; do measure "$1" "$2" "$3" "$4" "$r"; done
}

# start_device ARGS...: runs opof device on core 1 (cores $cpus) in the device namespace, waits
# for its datapath.
cpus=1
# Two workers: cores of their own when there are three, else both cores (one shared with the
# generator).
if [ "$(nproc)" -ge 3 ]; then two_worker_cpus=1,2; else two_worker_cpus=0,1; fi
start_device() {
  local log=$work/device.log
  spawn_logged "$log" ip netns exec $D taskset -c "$cpus" "$opof" device --listen 127.0.0.1:50161 --capacity 65536 "$@"
  device_pid=$spawned
  wait_log "$log" "$device_pid" "datapath running" 10
}

# measure_drain MODE PORT SINK_IF GEN_IF WORKERS: the drain run of a started, offloaded device
# (see the header): stopped, DRAIN_LOOPS passes of the capture a worker queued for it as fast as
# the generator sends, then resumed and timed by benches/drain.py until the sink's counter stops.
measure_drain() {
  local mode=$1 port=$2 sink=$3 gif=$4 workers=$5
  kill -STOP "$device_pid"
  # As many frames for each worker whatever their number: each drains a queue as deep (a TAP
  # queue's; an AF_PACKET socket holds what its buffer takes whatever is sent).
  ip netns exec $G taskset -c 0 "$opof" replay "$work/64.pcap" --to "afpacket:$gif" --fast \
    --loops $((drain_loops * workers)) \
    > "$work/gen.json" 2>/dev/null
  sleep 0.2
  ip netns exec $S python3 benches/drain.py "$device_pid" "/sys/class/net/$sink/statistics/rx_packets" > "$work/drain.json"
  python3 -c '
import json, sys
mode, port = sys.argv[1], sys.argv[2]
sent = json.load(open(sys.argv[3]))["frames"]
d = json.load(open(sys.argv[4]))
print(json.dumps({"port": port, "mode": mode, "rate": "drain", "sent": sent, "delivered": d["frames"],
                  "seconds": d["seconds"], "delivered_fps": d["fps"],
                  "delivered_share": round(d["frames"] / max(sent, 1), 4)}))
' "$mode" "$port" "$work/gen.json" "$work/drain.json" | tee -a "$work/all.jsonl"
}

# move_taps: the device made t0 and t1 in its namespace; their kernel sides go to the generator
# and the sink, up.
move_taps() {
  ip -n $D link set t0 netns $G
  ip -n $D link set t1 netns $S
  ip -n $G link set t0 up
  ip -n $S link set t1 up
}

offload() {
  ip netns exec $D "$opof" offload "$work/64.pcap" --endpoint 127.0.0.1:50161 --api v2 >/dev/null
}

for _ in $(seq "$reps"); do
  # Linux bridge.
  ip -n $D link add br0 type bridge
  ip -n $D link set a0 master br0
  ip -n $D link set a1 master br0
  ip -n $D link set br0 up
  measure linux-bridge veth s0 g0 max
  ip -n $D link del br0
  # Linux IPv4 forwarding: frames are addressed to a0's MAC, routed out of a1 to s0.
  ip -n $D link set a0 address 02:00:00:00:00:02
  ip -n $D addr add 10.254.0.1/24 dev a1
  ip netns exec $D sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.a0.rp_filter=0
  ip -n $D neigh replace 10.254.0.2 lladdr "$s0_mac" dev a1 nud permanent
  ip -n $D route replace default via 10.254.0.2 dev a1
  measure linux-route veth s0 g0 max
  ip -n $D route del default
  ip -n $D addr flush dev a1
  ip netns exec $D sysctl -qw net.ipv4.ip_forward=0
  ip -n $D link set a0 address "$a0_mac"
  # The bare io_uring forwarder, then the device with every flow offloaded, on AF_PACKET.
  start_device --bare --port ext0=afpacket:a0 --port ext1=afpacket:a1
  measure_rates bare veth s0 g0
  stop_device
  start_device --port ext0=afpacket:a0 --port ext1=afpacket:a1
  offload
  measure_rates device veth s0 g0
  stop_device
  if [ "${WORKERS2:-0}" = 1 ]; then
    cpus=$two_worker_cpus
    start_device --workers 2 --port ext0=afpacket:a0 --port ext1=afpacket:a1
    offload
    measure_rates device-2w veth s0 g0
    stop_device
    cpus=1
  fi
  # TAP: the device makes t0 and t1; their kernel sides move to the generator and the sink.
  tap_modes="bare device"
  [ "${WORKERS2:-0}" = 1 ] && tap_modes="$tap_modes device-2w"
  for mode in $tap_modes; do
    if [ $mode = bare ]; then
      start_device --bare --port ext0=tap:t0 --port ext1=tap:t1
    elif [ $mode = device-2w ]; then
      cpus=$two_worker_cpus
      start_device --workers 2 --port ext0=tap:t0 --port ext1=tap:t1
      cpus=1
      offload
    else
      start_device --port ext0=tap:t0 --port ext1=tap:t1
      offload
    fi
    move_taps
    measure_rates "$mode" tap t1 t0
    stop_device
  done
  # Drain runs, one worker then two, veth then TAP.
  if [ "${WORKERS2:-0}" = 1 ]; then
    for w in 1 2; do
      if [ $w = 1 ]; then mode=device cpus=1; else mode=device-2w cpus=$two_worker_cpus; fi
      start_device --workers $w --socket-buffer "$drain_socket_buffer" --port ext0=afpacket:a0 --port ext1=afpacket:a1
      offload
      for _ in $(seq "$drain_runs"); do measure_drain $mode veth s0 g0 $w; done
      stop_device
      start_device --workers $w --port ext0=tap:t0 --port ext1=tap:t1
      offload
      move_taps
      ip -n $G link set t0 txqueuelen "$drain_txqueuelen"
      for _ in $(seq "$drain_runs"); do measure_drain $mode tap t1 t0 $w; done
      stop_device
    done
    cpus=1
  fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$work/all.jsonl" "$two_worker_cpus" >&2 <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
shared = "0" in sys.argv[2].split(",")
def cell(port, mode, rate, key="delivered_fps"):
    xs = [r[key] for r in rows if (r["port"], r["mode"], r["rate"]) == (port, mode, rate)]
    return statistics.median(xs) if xs else float("nan")
rates = sorted({r["rate"] for r in rows if r["rate"] not in ("max", "drain")}, key=int) + ["max"]
print("\n| port | forwarder | " + " | ".join(f"offered {r}" for r in rates) + " | peak | max / peak |")
print("|---" * (len(rates) + 4) + "|")
peaks = {}
for port in ["veth", "tap"]:
    for mode in ["bare", "device", "device-2w"]:
        if not any(r["mode"] == mode for r in rows):
            continue
        vals = [cell(port, mode, r) for r in rates]
        peak = max(vals)
        peaks[(port, mode)] = peak
        print(f"| {port} | {mode} | " + " | ".join(f"{v:,.0f}" for v in vals) + f" | {peak:,.0f} | {vals[-1] / peak:.2f} |")
for mode in ["linux-bridge", "linux-route"]:
    print(f"| veth | {mode} | " + " | ".join("" for _ in rates[:-1]) + f" | {cell('veth', mode, 'max'):,.0f} | | |")
print()
for port in ["veth", "tap"]:
    print(f"{port}: device peak / bare peak = {peaks[(port, 'device')] / peaks[(port, 'bare')]:.2f}")
    if (port, "device-2w") in peaks:
        one, two = peaks[(port, "device")], peaks[(port, "device-2w")]
        offered = cell(port, "device-2w", "max", "offered_fps")
        if two >= 1.5 * one:
            verdict = "met"
        elif shared:
            verdict = f"not judgeable: a worker shared core 0 with the generator (offered {offered:,.0f} at max)"
        elif offered < 1.5 * one:
            verdict = f"not judgeable: the generator offered {offered:,.0f}, under 1.5x one worker's peak"
        else:
            verdict = f"not met: {offered:,.0f} offered"
        print(f"{port}: two workers' peak / one worker's = {two / one:.2f} (target 1.5: {verdict})")
drains = [(port, cell(port, "device", "drain"), cell(port, "device-2w", "drain")) for port in ["veth", "tap"]]
if any(r["rate"] == "drain" for r in rows):
    print("\n| port | drain rate, one worker | two workers | queued, one / two (median) |")
    print("|---|---|---|---|")
    for port, one, two in drains:
        q1, q2 = cell(port, "device", "drain", "delivered"), cell(port, "device-2w", "drain", "delivered")
        print(f"| {port} | {one:,.0f} | {two:,.0f} | {q1:,.0f} / {q2:,.0f} |")
    print()
    for port, one, two in drains:
        if not one > 0:
            print(f"{port}: one worker drained nothing: no drain ratio")
            continue
        verdict = "met" if two >= 1.5 * one else "not met"
        print(f"{port}: two workers' drain rate / one worker's = {two / one:.2f} (target 1.5: {verdict})")
for mode in ["linux-bridge", "linux-route"]:
    print(f"veth: device peak / {mode} = {peaks[('veth', 'device')] / cell('veth', mode, 'max'):.2f}")
PY
