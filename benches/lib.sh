# Shell helpers shared by the benchmark scripts (sourced, not run).

# wait_log LOG PID PATTERN [SECONDS]: waits until the process PID has written a line matching
# PATTERN (grep's basic regular expression) to LOG. Fails with the log on stderr when the
# process exits first or SECONDS (default 30) pass.
wait_log() {
  local log=$1 pid=$2 pattern=$3 secs=${4:-30}
  for _ in $(seq $((secs * 20))); do
    grep -q -- "$pattern" "$log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "process $pid logged no line matching '$pattern' in $log; its log:" >&2
  cat "$log" >&2
  return 1
}

# spawn_logged LOG CMD...: starts CMD in the background, its stdout to /dev/null and its
# stderr to LOG, and leaves its process id in $spawned. LOG is emptied here, before CMD starts:
# a background command's own redirection may come after wait_log or listen_addr has read a
# reused LOG, and they would act on the previous process's line.
spawn_logged() {
  local log=$1
  shift
  : > "$log"
  "$@" > /dev/null 2>> "$log" &
  spawned=$!
}

# listen_addr LOG PID [SECONDS]: waits until the process PID (an `opof device` or `opof vnf`
# started with --listen 127.0.0.1:0) has logged the address it listens on (`listen=ADDR` in its
# log line), and prints it (host:port). Fails as wait_log does.
listen_addr() {
  wait_log "$1" "$2" 'listen=' "${3:-30}" || return 1
  grep -o 'listen=[^ ]*' "$1" | head -1 | cut -d= -f2
}

# host_steal: the CPU time, in seconds and every CPU together, that the hypervisor has given to
# something else since boot while this machine's CPUs had work (the steal column of /proc/stat's
# `cpu` line); 0 where it cannot be read. On a virtual machine it moves timings without the
# code changing: the difference of two readings is what a benchmark between them lost.
host_steal() {
  awk -v hz="$(getconf CLK_TCK 2>/dev/null || echo 100)" '/^cpu / { printf "%.2f\n", $9 / hz; found = 1; exit }
    END { if (!found) print 0 }' /proc/stat 2>/dev/null || echo 0
}
