#!/usr/bin/env bash
# Instruction counts: the figure this machine's noise does not move. valgrind's callgrind counts
# the instructions a run executes, the same for the same binary and inputs whatever else the
# machine does, so a change to the datapath or the table can be judged from one run of each
# build (timings here vary by a third from run to run).
#
# Usage (after `cargo build --release`; needs valgrind):
#   benches/instructions.sh [SESSIONS] > instructions.jsonl   # default 100000
#   WORKERS=2 benches/instructions.sh ...    # datapath workers and shards (default 1)
#
# - per frame: `opof bench datapath` (decide_batch on the in-memory wire, SESSIONS sessions,
#   batches of 256) run twice, with N and 2N frames; (I(2N) − I(N)) / N is the cost of one
#   frame, without the set-up (table fill, frame generation) both runs share.
# - per session added: `opof device` under callgrind, `opof bench add` sending SESSIONS and then
#   2 × SESSIONS sessions (streams of 10,000) from outside; the difference of the device's
#   totals over SESSIONS is the cost of one addSession request (decode, validate, store),
#   without start-up and shutdown.
# - per session added by short concurrent streams: the same with streams of 64 sessions, 16 at
#   a time (what a VNF offloading flows as it sees them sends). The streams commit in whatever
#   order the scheduler gives them, so this count moves by about 1 % from run to run.
# One JSON object per figure on stdout; the callgrind files stay in a temporary folder named on
# stderr (callgrind_annotate them to see where the instructions go).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
sessions=${1:-100000}
workers=${WORKERS:-1}
opof=$(pwd)/target/release/opof
[ -x "$opof" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
work=$(mktemp -d)
echo "callgrind output in $work" >&2
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

# The total instructions callgrind counted (its "summary:" line).
total() { awk '/^summary:/ {print $2}' "$1"; }

cg() { # OUT ARGS...: runs opof under callgrind
  local out=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$out" "$opof" "$@" >/dev/null 2>>"$work/valgrind.log"
}

# Per frame.
frames=400000
cg "$work/dp1.out" bench datapath --sessions "$sessions" --total "$frames" --workers "$workers"
cg "$work/dp2.out" bench datapath --sessions "$sessions" --total $((2 * frames)) --workers "$workers"
i1=$(total "$work/dp1.out"); i2=$(total "$work/dp2.out")
python3 -c "import json,sys; i1,i2,n=map(int,sys.argv[1:4]); print(json.dumps({'figure':'instructions_per_frame','value':round((i2-i1)/n,1),'sessions':int(sys.argv[4]),'frames':n,'workers':int(sys.argv[6]),'runs_instructions':[i1,i2],'commit':sys.argv[5]}))" \
  "$i1" "$i2" "$frames" "$sessions" "$commit" "$workers"

# Per session added.
add_run() { # OUT COUNT [PER_STREAM STREAMS]
  local out=$1 count=$2 per=${3:-10000} streams=${4:-1} port log pid
  log="$out.log"
  spawn_logged "$log" valgrind --tool=callgrind --callgrind-out-file="$out" "$opof" device --listen 127.0.0.1:0 \
    --capacity $((4 * sessions)) --workers "$workers"
  pid=$spawned
  port=$(listen_addr "$log" "$pid" 60) || exit 1
  port=${port##*:}
  "$opof" bench add --endpoint "127.0.0.1:$port" --sessions "$count" --per-stream "$per" --streams "$streams" >/dev/null
  kill -INT "$pid"
  wait "$pid" || true
}
add_run "$work/add1.out" "$sessions"
add_run "$work/add2.out" $((2 * sessions))
a1=$(total "$work/add1.out"); a2=$(total "$work/add2.out")
python3 -c "import json,sys; a1,a2,n=map(int,sys.argv[1:4]); print(json.dumps({'figure':'instructions_per_session_added','value':round((a2-a1)/n,1),'sessions':n,'per_stream':10000,'workers':int(sys.argv[5]),'runs_instructions':[a1,a2],'commit':sys.argv[4]}))" \
  "$a1" "$a2" "$sessions" "$commit" "$workers"

# Per session added by 16 concurrent streams of 64.
add_run "$work/short1.out" "$sessions" 64 16
add_run "$work/short2.out" $((2 * sessions)) 64 16
s1=$(total "$work/short1.out"); s2=$(total "$work/short2.out")
python3 -c "import json,sys; a1,a2,n=map(int,sys.argv[1:4]); print(json.dumps({'figure':'instructions_per_session_added','value':round((a2-a1)/n,1),'sessions':n,'per_stream':64,'streams':16,'workers':int(sys.argv[5]),'runs_instructions':[a1,a2],'commit':sys.argv[4]}))" \
  "$s1" "$s2" "$sessions" "$commit" "$workers"
