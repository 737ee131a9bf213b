# shellcheck shell=bash
# Hosts made of Linux network namespaces, for the multi-host pool
# (deploy/multi-host-pool.sh) and the fault schedule (tests/netns/nemesis.sh).
# Source it; needs root, iproute2 and iptables.
#
# One switch namespace holds a bridge; every host is a namespace with one
# veth (eth0) plugged into that bridge and an address from the
# documentation range 192.0.2.0/24 (RFC 5737), so nothing leaves the
# machine. Processes run with `ip netns exec`. Faults between hosts are
# iptables rules inside the hosts' namespaces (a partition drops both ways
# at both ends; loss drops a random share of incoming packets) and links
# set down. Delay, reordering and duplication need the netem qdisc, which
# the host kernel of this project's CI lacks (see docs/multi-host.md).
#
#   netns_up                    switch namespace and bridge
#   host_add NAME ADDRESS       a host on the bridge (192.0.2.X)
#   on NAME CMD...              run CMD in host NAME
#   partition A B / heal A B    cut / restore traffic between two hosts
#   partition_groups "A B" "C D"  every host of one group from every host of the other
#   heal_all                    drop every fault rule and bring links up
#   loss NAME PERCENT           drop PERCENT % of packets arriving at NAME
#   link_down NAME / link_up NAME
#   netns_down                  delete every namespace made (EXIT trap)

# A short per-run prefix: interface names are at most 15 characters, and
# two runs on one machine must not meet.
NETNS_PREFIX=${NETNS_PREFIX:-pf$(( $$ % 100000 ))}
declare -gA NETNS_ADDRESS=()
NETNS_HOSTS=()

netns_up() {
  command -v ip >/dev/null || { echo "netns: iproute2 (ip) missing" >&2; return 1; }
  command -v iptables >/dev/null || { echo "netns: iptables missing" >&2; return 1; }
  ip netns add "$NETNS_PREFIX-sw"
  ip -n "$NETNS_PREFIX-sw" link add br0 type bridge
  ip -n "$NETNS_PREFIX-sw" link set br0 up
  ip -n "$NETNS_PREFIX-sw" link set lo up
}

host_add() { # NAME ADDRESS
  local ns="$NETNS_PREFIX-$1" port="${NETNS_PREFIX}${#NETNS_HOSTS[@]}"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "$port" netns "$NETNS_PREFIX-sw" type veth peer name eth0 netns "$ns"
  ip -n "$NETNS_PREFIX-sw" link set "$port" master br0 up
  ip -n "$ns" addr add "$2/24" dev eth0
  ip -n "$ns" link set eth0 up
  NETNS_ADDRESS[$1]=$2
  NETNS_HOSTS+=("$1")
}

on() { # NAME CMD...
  local ns="$NETNS_PREFIX-$1"
  shift
  ip netns exec "$ns" "$@"
}

address() { echo "${NETNS_ADDRESS[$1]}"; }

# Rules carry a comment so heal can remove exactly them.
partition() { # A B
  local a=$1 b=$2
  on "$a" iptables -A INPUT -s "$(address "$b")" -m comment --comment "pf-cut-$b" -j DROP
  on "$a" iptables -A OUTPUT -d "$(address "$b")" -m comment --comment "pf-cut-$b" -j DROP
  on "$b" iptables -A INPUT -s "$(address "$a")" -m comment --comment "pf-cut-$a" -j DROP
  on "$b" iptables -A OUTPUT -d "$(address "$a")" -m comment --comment "pf-cut-$a" -j DROP
}

_drop_rules() { # HOST COMMENT
  local rule
  while rule=$(on "$1" iptables -S | grep -m1 -- "--comment \"\?$2\"\? "); do
    # shellcheck disable=SC2086
    on "$1" iptables ${rule/-A /-D }
  done
}

heal() { # A B
  _drop_rules "$1" "pf-cut-$2"
  _drop_rules "$2" "pf-cut-$1"
}

partition_groups() { # "A B ..." "C D ..."
  local a b
  for a in $1; do for b in $2; do partition "$a" "$b"; done; done
}

loss() { # NAME PERCENT
  local p
  p=$(awk -v x="$2" 'BEGIN { printf "%.4f", x / 100 }')
  on "$1" iptables -A INPUT -m statistic --mode random --probability "$p" \
    -m comment --comment pf-loss -j DROP
}

link_down() { on "$1" ip link set eth0 down; }
link_up() { on "$1" ip link set eth0 up; }

heal_all() {
  local h
  for h in "${NETNS_HOSTS[@]}"; do
    on "$h" iptables -F INPUT
    on "$h" iptables -F OUTPUT
    link_up "$h"
  done
}

netns_down() {
  local h
  for h in "${NETNS_HOSTS[@]}"; do
    # Anything still running in the namespace goes first.
    ip netns pids "$NETNS_PREFIX-$h" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$NETNS_PREFIX-$h" 2>/dev/null || true
  done
  ip netns del "$NETNS_PREFIX-sw" 2>/dev/null || true
  NETNS_HOSTS=()
}
