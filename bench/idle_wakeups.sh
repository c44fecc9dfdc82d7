#!/usr/bin/env bash
# Idle wake-ups of one node in a 3-node loopback mesh: context switches of all its threads
# (voluntary and involuntary) per second, and CPU time, over IDLE seconds (default 20)
# with no jobs. Usage: bench/idle_wakeups.sh path/to/fabnode TAG. Needs curl and python3.
set -euo pipefail
BIN=$1; TAG=$2; IDLE=${IDLE:-20}
root=$(mktemp -d)
pids=()
start() { # dir [bootstrap]
  FABNODE_DATA_DIR=$1 $BIN keys init >/dev/null
  env FABNODE_DATA_DIR=$1 FABNODE_MESH_ENABLED=true FABNODE_MESH_MDNS=false FABNODE_LEDGER_NETWORK=idle$TAG \
    FABNODE_MESH_LISTEN=/ip4/127.0.0.1/tcp/0 ${2:+FABNODE_MESH_BOOTSTRAP=$2} \
    $BIN start --api-listen 127.0.0.1:0 --log-level warn >/dev/null 2>&1 &
  pids+=($!)
}
start $root/a
for i in $(seq 50); do [ -f $root/a/api.addr ] && break; sleep 0.1; done
api=$(cat $root/a/api.addr)
boot=$(curl -s http://$api/v1/node | python3 -c 'import json,sys; n=json.load(sys.stdin); print(n["mesh"]["listen"][0]+"/p2p/"+n["peer_id"])')
start $root/b $boot
start $root/c $boot
sleep 8
pid=${pids[0]}
sw() { cat /proc/$pid/task/*/status | awk '/^voluntary_ctxt_switches/ {v+=$2} /^nonvoluntary_ctxt_switches/ {n+=$2} END {print v+n}'; }
cpu() { awk '{print $14+$15}' /proc/$pid/stat; }
peers=$(curl -s http://$api/v1/peers | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["peers"]))')
s0=$(sw); c0=$(cpu); sleep $IDLE; s1=$(sw); c1=$(cpu)
tck=$(getconf CLK_TCK)
python3 -c "print('$TAG: peers=$peers wakeups/s=%.1f cpu=%.2f%%' % (($s1-$s0)/$IDLE, 100*($c1-$c0)/$tck/$IDLE))"
kill ${pids[@]}; wait 2>/dev/null || true
rm -rf $root
