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
# set down. Delay, reordering and duplication would take the netem qdisc,
# which the host kernel of this project's CI lacks (see docs/multi-host.md):
# `impair` hands a host's packets to tests/src/bin/netem.rs through NFQUEUE
# (loss, delay ± jitter, so reordering) and clones some with the TEE target
# (duplication).
#
#   netns_up                    switch namespace and bridge
#   host_add NAME ADDRESS       a host on the bridge (192.0.2.X)
#   on NAME CMD...              run CMD in host NAME
#   partition A B / heal A B    cut / restore traffic between two hosts
#   partition_groups "A B" "C D"  every host of one group from every host of the other
#   heal_all                    drop every fault rule and bring links up
#   loss NAME PERCENT           drop PERCENT % of packets arriving at NAME
#   impair NAME LOSS DELAY JITTER DUPLICATE
#                               every packet into and out of NAME's eth0:
#                               LOSS % dropped, the rest delayed DELAY ±
#                               JITTER (e.g. 50ms 20ms), DUPLICATE % of those
#                               it sends cloned; needs $NETNS_NETEM (the
#                               netem binary), logs to $NETNS_NETEM_LOG
#   link_down NAME / link_up NAME
#   netns_down                  delete every namespace made (EXIT trap)

# A short per-run prefix: interface names are at most 15 characters, and
# two runs on one machine must not meet.
NETNS_PREFIX=${NETNS_PREFIX:-pf$(( $$ % 100000 ))}
declare -gA NETNS_ADDRESS=()
declare -gA NETNS_NETEM_PID=()
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

impair() { # NAME LOSS_PERCENT DELAY JITTER DUPLICATE_PERCENT
  local h=$1 log=${NETNS_NETEM_LOG:-/dev/null} other p i
  [ -x "${NETNS_NETEM:-}" ] || { echo "netns: impair needs NETNS_NETEM, the netem binary" >&2; return 1; }
  local mark="netem: queue 7 "
  # Not through `on`: a function in the background is a subshell, and its
  # pid would not be netem's (ip netns exec execs the program in place).
  ip netns exec "$NETNS_PREFIX-$h" "$NETNS_NETEM" --queue 7 --loss "$2" --delay "$3" --jitter "$4" \
    --seed "${NETNS_NETEM_SEED:-1}" >>"$log" 2>&1 &
  NETNS_NETEM_PID[$h]=$!
  # Until netem has bound the queue, --queue-bypass would let packets
  # through unimpaired; wait for its banner (bounded: 5 s).
  if [ "$log" != /dev/null ]; then
    for i in $(seq 50); do grep -q "$mark" "$log" 2>/dev/null && break; sleep 0.1; done
  fi
  # eth0 only: the host's own loopback (status and metrics) stays clean.
  on "$h" iptables -A INPUT -i eth0 -m comment --comment pf-impair -j NFQUEUE --queue-num 7 --queue-bypass
  on "$h" iptables -A OUTPUT -o eth0 -m comment --comment pf-impair -j NFQUEUE --queue-num 7 --queue-bypass
  p=$(awk -v x="$5" 'BEGIN { printf "%.4f", x / 100 }')
  for other in "${NETNS_HOSTS[@]}"; do
    [ "$other" = "$h" ] && continue
    on "$h" iptables -t mangle -A OUTPUT -o eth0 -d "$(address "$other")" \
      -m statistic --mode random --probability "$p" -m comment --comment pf-dup \
      -j TEE --gateway "$(address "$other")"
  done
}

link_down() { on "$1" ip link set eth0 down; }
link_up() { on "$1" ip link set eth0 up; }

heal_all() {
  local h
  for h in "${NETNS_HOSTS[@]}"; do
    on "$h" iptables -F INPUT
    on "$h" iptables -F OUTPUT
    on "$h" iptables -t mangle -F OUTPUT
    link_up "$h"
  done
  # With the rules gone nothing new is queued; netem passes what it holds.
  for h in "${!NETNS_NETEM_PID[@]}"; do
    kill -TERM "${NETNS_NETEM_PID[$h]}" 2>/dev/null || true
    wait "${NETNS_NETEM_PID[$h]}" 2>/dev/null || true
  done
  NETNS_NETEM_PID=()
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
