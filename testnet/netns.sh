#!/usr/bin/env bash
# Network plumbing for a testnet whose validators each run in their own
# network namespace, as if on separate hosts. Needs root (or CAP_NET_ADMIN).
#
#   netns.sh up NAME N
#       namespaces NAME-v0 .. NAME-v(N-1), each with loopback and one veth
#       (NAME-hI on this side) to this host, which routes between them; host
#       I is 10.X.Y.(I+1) and this host is 10.X.Y.254 (10.X.Y from
#       `netns.sh subnet NAME`).
#   netns.sh delay NAME LINKEM DELAY_MS JITTER_MS LOSS_PCT
#       sends every packet between two of NAME's hosts through the link
#       emulator LINKEM (the pyrsia-linkem binary): each is delayed by
#       DELAY_MS ± JITTER_MS one way, or dropped with LOSS_PCT percent
#       probability. A round trip between two validators is 2 × DELAY_MS.
#       (This kernel may lack sch_netem, hence a userspace emulator.)
#   netns.sh down NAME             deletes them (and kills what runs inside)
#   netns.sh subnet NAME           prints the /24 prefix, e.g. 10.201.7
#   netns.sh partition NAME A B    drops all traffic between hosts in the
#                                  comma lists A and B (e.g. 0,1 2,3)
#   netns.sh heal NAME             removes every partition
#   netns.sh exec NAME I CMD...    runs CMD in host I's namespace
#
# NAME is at most 8 characters (interface names are at most 15).
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"

usage() { sed -n '2,20p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd="$1" name="$2"
shift 2
[ "${#name}" -le 8 ] || { echo "netns.sh: NAME '$name' is longer than 8 characters" >&2; exit 2; }

# A /24 derived from NAME, so that several testnets can run side by side.
subnet() {
  local h
  h=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
  echo "10.$((200 + h % 50)).$((h / 50 % 256))"
}

# Where the emulator's pid and log are kept.
run_dir="${PYRSIA_NETNS_RUN:-/run/pyrsia-netns}"
queue_num() { printf '%s' "$1" | cksum | awk '{print 1000 + $1 % 60000}'; }
rule() { echo "FORWARD -s $(subnet "$name").0/24 -d $(subnet "$name").0/24 -j NFQUEUE --queue-num $(queue_num "$name")"; }

namespaces() { ip netns list | awk '{print $1}' | grep -E "^$name-v[0-9]+$" || true; }

case "$cmd" in
  subnet) subnet "$name" ;;
  up)
    n="${1:?netns.sh up NAME N}"
    net="$(subnet "$name")"
    # The host routes between the namespaces, so that traffic between
    # validators crosses its FORWARD chain (where netns.sh delay hooks in).
    sysctl -qw net.ipv4.ip_forward=1
    for i in $(seq 0 $((n - 1))); do
      ns="$name-v$i" host_end="$name-h$i" ip_i="$net.$((i + 1))"
      ip netns add "$ns"
      ip link add "$host_end" type veth peer name eth0 netns "$ns"
      ip addr add "$net.254/32" dev "$host_end"
      ip link set "$host_end" up
      ip route add "$ip_i/32" dev "$host_end"
      ip -n "$ns" link set lo up
      ip -n "$ns" addr add "$ip_i/32" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" route add "$net.254/32" dev eth0
      ip -n "$ns" route add default via "$net.254"
    done
    ;;
  delay)
    linkem="${1:?delay NAME LINKEM DELAY_MS JITTER_MS LOSS_PCT}"
    mkdir -p "$run_dir"
    "$linkem" --queue "$(queue_num "$name")" --delay-ms "${2:-25}" --jitter-ms "${3:-0}" \
      --loss-pct "${4:-0}" >"$run_dir/$name.linkem.log" 2>&1 &
    echo $! >"$run_dir/$name.linkem.pid"
    # shellcheck disable=SC2046
    iptables -I $(rule)
    ;;
  down)
    # shellcheck disable=SC2046
    while iptables -C $(rule) 2>/dev/null; do iptables -D $(rule); done
    if [ -f "$run_dir/$name.linkem.pid" ]; then
      kill "$(cat "$run_dir/$name.linkem.pid")" 2>/dev/null || true
      rm -f "$run_dir/$name.linkem.pid" "$run_dir/$name.linkem.log"
    fi
    for ns in $(namespaces); do
      # Whatever still runs inside would keep the namespace alive.
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns"
    done
    for dev in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^$name-h[0-9]+$" || true); do
      ip link del "$dev" 2>/dev/null || true
    done
    ;;
  partition)
    net="$(subnet "$name")"
    IFS=, read -ra side_a <<<"${1:?partition NAME A B}"
    IFS=, read -ra side_b <<<"${2:?partition NAME A B}"
    for a in "${side_a[@]}"; do
      for b in "${side_b[@]}"; do
        ip -n "$name-v$a" route replace blackhole "$net.$((b + 1))/32"
        ip -n "$name-v$b" route replace blackhole "$net.$((a + 1))/32"
      done
    done
    ;;
  heal)
    for ns in $(namespaces); do
      ip -n "$ns" route show type blackhole | while read -r _ dst _; do
        ip -n "$ns" route del blackhole "$dst"
      done
    done
    ;;
  exec)
    i="${1:?exec NAME I CMD...}"
    shift
    exec ip netns exec "$name-v$i" "$@"
    ;;
  *) usage ;;
esac
