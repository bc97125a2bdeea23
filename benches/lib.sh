# Shell helpers shared by the benchmark scripts (sourced, not run).

# listen_addr LOG PID [SECONDS]: waits until the process PID (an `opof device` or `opof vnf`
# started with --listen 127.0.0.1:0) has logged the address it listens on, and prints it
# (host:port). The process's log line carries `listen=ADDR`. Fails with the log on stderr when
# the process exits first or SECONDS (default 30) pass.
listen_addr() {
  local log=$1 pid=$2 secs=${3:-30} addr
  for _ in $(seq $((secs * 20))); do
    addr=$(grep -o 'listen=[^ ]*' "$log" 2>/dev/null | head -1 | cut -d= -f2)
    if [ -n "$addr" ]; then
      echo "$addr"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "process $pid logged no listen= address in $log; its log:" >&2
  cat "$log" >&2
  return 1
}
