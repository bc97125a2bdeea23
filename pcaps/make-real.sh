#!/usr/bin/env bash
# Records pcaps/real-http-dns.pcap: real programs talking between two network namespaces,
# captured by tcpdump on the client's veth. Needs root and the Debian packages tcpdump,
# dnsmasq-base, bind9-dnsutils (dig), ethtool, curl and python3.
#
#   ns opof-cli (10.99.0.1, fd99::1)  <── veth ──>  ns opof-srv (10.99.0.2, fd99::2)
#   dig (DNS, UDP and TCP) ─────────────────────>  dnsmasq (answers *.example.test)
#   curl (HTTP/1.1 over TCP, IPv4 and IPv6) ─────>  python3 -m http.server (a 64 KiB file)
#
# Usage: pcaps/make-real.sh [OUTPUT]     (default pcaps/real-http-dns.pcap)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-pcaps/real-http-dns.pcap}
for tool in ip tcpdump dnsmasq dig ethtool curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }

work=$(mktemp -d)
cleanup() {
  # Every process still in the namespaces (the servers, tcpdump), then the namespaces.
  for ns in opof-cli opof-srv; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  done
  ip netns del opof-cli 2>/dev/null || true
  ip netns del opof-srv 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cleanup 2>/dev/null || true
work=$(mktemp -d)

ip netns add opof-cli
ip netns add opof-srv
ip link add veth-cli netns opof-cli type veth peer name veth-srv netns opof-srv
ip -n opof-cli addr add 10.99.0.1/24 dev veth-cli
ip -n opof-srv addr add 10.99.0.2/24 dev veth-srv
ip -n opof-cli addr add fd99::1/64 dev veth-cli nodad
ip -n opof-srv addr add fd99::2/64 dev veth-srv nodad
for ns in opof-cli opof-srv; do
  ip -n "$ns" link set lo up
done
ip -n opof-cli link set veth-cli up
ip -n opof-srv link set veth-srv up
# Segmentation offloads off: the capture holds frames as a NIC would put them on the wire
# (at most 1514 bytes), not the kernel's 64 KiB super-segments, so it can be replayed.
ip netns exec opof-cli ethtool -K veth-cli tso off gso off gro off >/dev/null
ip netns exec opof-srv ethtool -K veth-srv tso off gso off gro off >/dev/null

# The servers: a DNS server for example.test, and a web server with a 64 KiB file.
head -c 65536 /dev/zero | tr '\0' 'o' > "$work/file.bin"
ip netns exec opof-srv dnsmasq --no-daemon --no-resolv --no-hosts --port=53 \
  --listen-address=10.99.0.2 --bind-interfaces \
  --address=/www.example.test/10.99.0.2 --address=/www.example.test/fd99::2 \
  --pid-file="$work/dnsmasq.pidfile" >"$work/dnsmasq.log" 2>&1 &
echo $! > "$work/dnsmasq.pid"
(cd "$work" && exec ip netns exec opof-srv python3 -m http.server 8080 --bind :: >"$work/http.log" 2>&1) &
echo $! > "$work/http.pid"
sleep 1

# The capture, on the client's side of the wire.
ip netns exec opof-cli tcpdump -i veth-cli -w "$out" -U -s 262144 'ip or ip6' 2>"$work/tcpdump.log" &
echo $! > "$work/tcpdump.pid"
sleep 1

ip netns exec opof-cli dig +short @10.99.0.2 www.example.test A
ip netns exec opof-cli dig +short @10.99.0.2 www.example.test AAAA
ip netns exec opof-cli dig +short +tcp @10.99.0.2 www.example.test A
ip netns exec opof-cli curl -s -o /dev/null -w '%{http_code} %{size_download} bytes over IPv4\n' \
  http://10.99.0.2:8080/file.bin
ip netns exec opof-cli curl -s -o /dev/null -w '%{http_code} %{size_download} bytes over IPv6\n' \
  'http://[fd99::2]:8080/file.bin'
sleep 1
kill "$(cat "$work/tcpdump.pid")"
wait "$(cat "$work/tcpdump.pid")" 2>/dev/null || true
tcpdump -nn -r "$out" 2>/dev/null | wc -l | xargs echo "frames captured into $out:"
