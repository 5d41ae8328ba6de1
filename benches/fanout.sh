#!/usr/bin/env bash
# P2P fan-out, measured: N agents, each a separate process in its own
# network namespace (veth to a bridge), every host link shaped with tc tbf
# to B in both directions, the origin's link too. One blob of S MiB is
# fetched by all agents at once through the swarm; then, as the baseline,
# every host downloads the same blob straight from the origin registry
# (curl) over the same shaped links.
#
#   sudo N=16 benches/fanout.sh          # N=16 S=64 MIB B=50 (Mbit/s) by default
#   sudo N=32 benches/fanout.sh
#   sudo ORIGIN_ARGS="--p2p-chain 0" N=16 benches/fanout.sh   # swarm only, no chain
#   sudo LINKSTATS=1 KEEP=1 N=16 BASELINE=0 benches/fanout.sh
#       then benches/fanout-links.py WORKDIR 50 1 64: link use per second
#
# Reports per-host completion (p50, p99, max) against S/B, origin egress in
# copies of S, and the CPU seconds the agents used. Needs root, iproute2,
# curl, python3 and a release build. Namespaces, links and processes are
# removed on exit, also on failure.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
strata="${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/strata}"
[ -x "$strata" ] || { echo "build first: cargo build --release" >&2; exit 1; }
n="${N:-16}"; size_mib="${S:-64}"; mbit="${B:-50}"
[ "$n" -ge 1 ] && [ "$n" -le 200 ] || { echo "N must be 1..200" >&2; exit 1; }
work=$(mktemp -d /var/tmp/strata-fanout-XXXXXX)
sw="sf$$-sw"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.2
    for i in $(seq 0 "$n"); do ip netns del "sf$$-$i" 2>/dev/null || true; done
    ip netns del "$sw" 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# The switch: a bridge in a namespace of its own, as a hardware switch
# would be: frames between hosts never pass the root namespace's iptables
# and conntrack (Docker's rules), which a real network does not run either.
ip netns add "$sw"
ip netns exec "$sw" sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
ip -n "$sw" link add br0 type bridge
ip -n "$sw" link set br0 up
# Host i: namespace sf$$-i, address 10.203.1.(i+1); i = 0 is the origin.
for i in $(seq 0 "$n"); do
    ns="sf$$-$i"
    ip netns add "$ns"
    ip -n "$sw" link add "p$i" type veth peer name eth0 netns "$ns"
    ip -n "$sw" link set "p$i" master br0 up
    ip -n "$ns" addr add "10.203.1.$((i + 1))/16" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # Upload (host egress) and download (switch port egress) at B.
    ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "${mbit}mbit" burst 64kb latency ${TBF_LATENCY:-20ms}
    ip netns exec "$sw" tc qdisc add dev "p$i" root tbf rate "${mbit}mbit" burst 64kb latency ${TBF_LATENCY:-20ms}
done
# Commands on the origin host (its registry listens on the switch side).
on_origin() { ip netns exec "sf$$-0" "$@"; }

"$strata" cluster init --dir "$work/ca" >/dev/null 2>&1
"$strata" cluster issue origin --dir "$work/ca" --out "$work/certs" >/dev/null
for i in $(seq 1 "$n"); do "$strata" cluster issue "a$i" --dir "$work/ca" --out "$work/certs" >/dev/null; done

origin=10.203.1.1
# Uploads are paced just under the link rate (UPLOAD_CAP percent of B), so
# pieces leave one at a time instead of queueing in tbf.
cap=$(python3 -c "print($mbit * ${UPLOAD_CAP:-95} / 100)")
# A read token for the origin's API (its egress counter); pushes are open.
read_token=$("$strata" token create bench --role read --data "$work/origin" 2>/dev/null)
ip netns exec "sf$$-0" "$strata" serve --open-push --listen "$origin:5000" --data "$work/origin" \
    --p2p-listen "$origin:5001" --p2p-certs "$work/certs" --p2p-upload-mbit "$cap" ${ORIGIN_ARGS:-} >"$work/origin.out" 2>"$work/origin.err" &
pids+=($!)
for _ in $(seq 1 100); do on_origin curl -sf "http://$origin:5000/v2/" >/dev/null && break; sleep 0.1; done
head -c "$((size_mib << 20))" /dev/urandom >"$work/blob"
digest="sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)"
on_origin curl -sf -X POST --data-binary @"$work/blob" "http://$origin:5000/v2/bench/blobs/uploads/?digest=$digest" -o /dev/null
floor=$(python3 -c "print($size_mib * 1048576 * 8 / ($mbit * 1e6))")
echo "fan-out: N=$n hosts, S=$size_mib MiB, B=$mbit Mbit/s, S/B=$(printf %.2f "$floor") s; $(nproc) cores"

# P2P: every agent at once.
origin_pid=${pids[0]}
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
origin_cpu0=$(cpu_of "$origin_pid")
start=$(date +%s.%N)
if [ -n "${LINKSTATS:-}" ]; then
    # Every switch port's counters each 100 ms: rx = the host's uplink,
    # tx = its downlink (read by benches/fanout-links.py).
    ( for _ in $(seq 1 3000); do
        printf '%s ' "$(date +%s.%N)"; ip -n "$sw" -s -j link show | tr -d '\n'; echo
        sleep 0.1
      done >"$work/links.jsonl" ) &
    pids+=($!)
fi
agent_pids=()
for i in $(seq 1 "$n"); do
    ip netns exec "sf$$-$i" /usr/bin/env time -f "%U %S" -o "$work/cpu-$i" \
        "$strata" agent --name "a$i" --certs "$work/certs" --origin "$origin:5001" \
        --listen "10.203.1.$((i + 1)):5001" --data "$work/a$i" --zone $((i % 4)) --fetch "$digest" \
        --upload-mbit "$cap" ${AGENT_ARGS:-} \
        >"$work/a$i.out" 2>"$work/a$i.err" &
    agent_pids+=($!)
    pids+=($!)
done
deadline=$(( $(date +%s) + 600 ))
for i in $(seq 1 "$n"); do
    until grep -q '"complete"' "$work/a$i.out" 2>/dev/null; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "agent a$i did not finish" >&2; tail -5 "$work/a$i.err" >&2; exit 1; }
        sleep 0.05
    done
done
# Packets the shaped links dropped (tbf queue full): retransmitted by QUIC.
drops() { "$@" tc -s -j qdisc show | python3 -c 'import json,sys; print(sum(q.get("drops", 0) for q in json.load(sys.stdin) if q.get("kind") == "tbf"))'; }
up_drops=0
for i in $(seq 1 "$n"); do up_drops=$((up_drops + $(drops ip netns exec "sf$$-$i"))); done
down_drops=$(drops ip netns exec "$sw")
echo "tbf drops: $(drops on_origin) on the origin's uplink, $up_drops on the agents' uplinks, $down_drops on downlinks"
origin_cpu=$(python3 -c "print(($(cpu_of "$origin_pid") - $origin_cpu0) / $(getconf CLK_TCK))")
echo "origin (seeder and tracker) CPU during the fan-out: $origin_cpu s"
egress=$(on_origin curl -sf -H "Authorization: Bearer $read_token" "http://$origin:5000/strata/api/p2p/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["origin_piece_bytes_served"])')
# Stop the agents themselves (not their `ip netns exec` parents) so that
# `time` reports their CPU.
pkill -INT -f -- "--certs $work/certs" || true
for p in "${agent_pids[@]}"; do timeout 20 tail --pid="$p" -f /dev/null || true; done
for i in $(seq 1 "$n"); do
    [ "$(sha256sum "$work/a$i/store/blobs/sha256/${digest#sha256:}" | cut -d' ' -f1)" = "${digest#sha256:}" ] \
        || { echo "a$i holds wrong bytes" >&2; exit 1; }
done

# Baseline: every host pulls the blob from the origin registry at once
# (BASELINE=0 skips it: at N=32 it takes N × S/B).
base_pids=()
for i in $(seq 1 "$n"); do
    if [ "${BASELINE:-1}" = 0 ]; then echo 0 >"$work/base-$i"; continue; fi
    ip netns exec "sf$$-$i" curl -sf -o /dev/null -w '%{time_total}\n' \
        "http://$origin:5000/v2/bench/blobs/$digest" >"$work/base-$i" &
    base_pids+=($!)
done
for p in "${base_pids[@]}"; do wait "$p"; done

python3 - "$work" "$n" "$floor" "$size_mib" "$egress" <<'PY'
import json, sys, math
work, n, floor, size_mib, egress = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def q(v, p):
    v = sorted(v); return v[max(0, math.ceil(p * len(v)) - 1)]
p2p, cpu = [], 0.0
for i in range(1, n + 1):
    line = [l for l in open(f"{work}/a{i}.out") if l.startswith('{"complete"')][0]
    p2p.append(json.loads(line)["report"]["seconds"])
    try:
        u, s = open(f"{work}/cpu-{i}").read().split()[-2:]; cpu += float(u) + float(s)
    except Exception:
        pass
base = [float(open(f"{work}/base-{i}").read().split()[0]) for i in range(1, n + 1)]
size = size_mib << 20
for name, v in (("p2p", p2p), ("direct from origin", base)):
    print(f"{name:20} p50 {q(v, .5):7.2f} s ({q(v, .5) / floor:.2f}× S/B)  p99 {q(v, .99):7.2f} s ({q(v, .99) / floor:.2f}×)  max {max(v):7.2f} s")
print(f"origin egress (p2p): {egress / size:.3f} × S; agents' CPU: {cpu:.1f} s in all, {cpu / n:.2f} s per host")
PY
