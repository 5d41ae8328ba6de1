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
#   sudo E2E=1 N=16 benches/fanout.sh     # end to end: every host pulls through its agent's mirror
#   sudo TLS_BASELINE=0 N=16 benches/fanout.sh   # without the TCP+TLS CPU baseline
#   sudo MTU=9000 N=16 benches/fanout.sh  # jumbo frames on every link
#   sudo AGENT_ARGS="--threads 1" E2E=1 N=32 BASELINE=0 benches/fanout.sh   # one-thread agents
#
# Reports per-host completion (p50, p99, max) against S/B, origin egress in
# copies of S, and the CPU the agents used, also per GiB they moved
# (received + forwarded). With E2E=1 the agents fetch nothing at start:
# once all are registered, every host GETs the blob from its own agent's
# pull-through registry (127.0.0.1:5002 in its namespace) with curl at
# once, timed from that moment to its last byte, as an engine would pull.
# The TCP+TLS baseline moves the same bytes around a ring of the same
# namespaces (host i GETs the blob from host i+1's `openssl s_server` over
# HTTPS with curl, all at once) and reports the CPU that costs per GiB
# moved, senders and receivers together. Needs root, iproute2, curl,
# openssl, python3 and a release build. Namespaces, links and processes
# are removed on exit, also on failure.
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
    if [ -n "${MTU:-}" ]; then
        ip -n "$sw" link set "p$i" mtu "$MTU"
        ip -n "$ns" link set eth0 mtu "$MTU"
    fi
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
e2e="${E2E:-0}"
# Agent i's CPU seconds so far (the process under `time`).
agent_cpu_at() {
    local p
    p=$(pgrep -f -- "^$strata agent --name a$1 --certs" | head -n 1)
    awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$p/stat" 2>/dev/null || echo nan
}
if [ "$e2e" = 1 ]; then
    # Agents with their pull-through registry, fetching nothing yet.
    what=(--registry "http://$origin:5000" --mirror-listen 127.0.0.1:5002)
else
    what=(--fetch "$digest")
fi
for i in $(seq 1 "$n"); do
    ip netns exec "sf$$-$i" /usr/bin/env time -f "%U %S" -o "$work/cpu-$i" \
        "$strata" agent --name "a$i" --certs "$work/certs" --origin "$origin:5001" \
        --listen "10.203.1.$((i + 1)):5001" --data "$work/a$i" --zone $((i % 4)) "${what[@]}" \
        --upload-mbit "$cap" ${AGENT_ARGS:-} \
        >"$work/a$i.out" 2>"$work/a$i.err" &
    agent_pids+=($!)
    pids+=($!)
done
deadline=$(( $(date +%s) + 600 ))
if [ "$e2e" = 1 ]; then
    registered() {
        on_origin curl -sf -H "Authorization: Bearer $read_token" "http://$origin:5000/strata/api/hosts" \
            | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0
    }
    until [ "$(registered)" = "$n" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "only $(registered) of $n agents registered" >&2; exit 1; }
        sleep 0.1
    done
    # The barrier: every host's pull starts now; each records when its
    # last byte came (and curl its own first byte). The agents' CPU is
    # also read here, so start-up (key loading, RNG seeding, the
    # handshakes of registering) is counted apart from the transfer.
    for i in $(seq 1 "$n"); do agent_cpu_at "$i" >"$work/cpu0-$i"; done
    start=$(date +%s.%N)
    pull_pids=()
    for i in $(seq 1 "$n"); do
        ip netns exec "sf$$-$i" sh -c 'curl -sf -o /dev/null -w "%{time_starttransfer} %{size_download}\n" "$1" >"$2" && date +%s.%N >>"$2"' \
            sh "http://127.0.0.1:5002/v2/bench/blobs/$digest" "$work/pull-$i" &
        pull_pids+=($!)
    done
    for i in "${!pull_pids[@]}"; do
        wait "${pull_pids[$i]}" || { echo "host $((i + 1)): the pull through its mirror failed" >&2; tail -5 "$work/a$((i + 1)).err" >&2; exit 1; }
    done
    for i in $(seq 1 "$n"); do agent_cpu_at "$i" >"$work/cpu1-$i"; done
    echo "$start" >"$work/start"
else
    for i in $(seq 1 "$n"); do
        until grep -q '"complete"' "$work/a$i.out" 2>/dev/null; do
            [ "$(date +%s)" -lt "$deadline" ] || { echo "agent a$i did not finish" >&2; tail -5 "$work/a$i.err" >&2; exit 1; }
            sleep 0.05
        done
    done
fi
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

# The TCP+TLS baseline: the same bytes around a ring of the same hosts,
# host i GETting the blob from host i+1 over HTTPS, every transfer at once.
echo 0 >"$work/tls"
if [ "${TLS_BASELINE:-1}" = 1 ]; then
    mkdir -p "$work/www"
    cp "$work/blob" "$work/www/blob"
    srv_pids=()
    for i in $(seq 1 "$n"); do
        (cd "$work/www" && exec ip netns exec "sf$$-$i" /usr/bin/env time -f "%U %S" -o "$work/tls-srv-$i" \
            openssl s_server -quiet -WWW -naccept 1 -accept "10.203.1.$((i + 1)):8443" \
            -cert "$work/certs/a$i.pem" -key "$work/certs/a$i.key" >/dev/null 2>"$work/tls-srv-$i.err") &
        srv_pids+=($!)
        pids+=($!)
    done
    for i in $(seq 1 "$n"); do
        for _ in $(seq 1 100); do
            ip netns exec "sf$$-$i" ss -ltn | grep -q ':8443 ' && break
            sleep 0.05
        done
    done
    cli_pids=()
    for i in $(seq 1 "$n"); do
        j=$((i % n + 1))
        ip netns exec "sf$$-$i" /usr/bin/env time -f "%U %S" -o "$work/tls-cli-$i" \
            curl -skf -o /dev/null -w '%{size_download} %{time_total}\n' \
            "https://10.203.1.$((j + 1)):8443/blob" >"$work/tls-got-$i" &
        cli_pids+=($!)
    done
    for p in "${cli_pids[@]}" "${srv_pids[@]}"; do timeout 300 tail --pid="$p" -f /dev/null || true; done
    echo 1 >"$work/tls"
fi

python3 - "$work" "$n" "$floor" "$size_mib" "$egress" "$e2e" <<'PY'
import json, sys, math
work, n, floor, size_mib, egress = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
e2e = sys.argv[6] == "1"
def q(v, p):
    v = sorted(v); return v[max(0, math.ceil(p * len(v)) - 1)]
def cpu(path):
    try:
        u, s = open(path).read().split()[-2:]; return float(u) + float(s)
    except Exception:
        return float("nan")
size = size_mib << 20
gib = float(1 << 30)
p2p, first, cpu_agents, cpu_transfer = [], [], 0.0, 0.0
if e2e:
    start = float(open(f"{work}/start").read())
for i in range(1, n + 1):
    if e2e:
        lines = open(f"{work}/pull-{i}").read().split("\n")
        (ttfb, got), end = lines[0].split(), float(lines[1])
        if int(got) != size:
            sys.exit(f"host {i} pulled {got} bytes, not {size}")
        p2p.append(end - start); first.append(float(ttfb))
    else:
        line = [l for l in open(f"{work}/a{i}.out") if l.startswith('{"complete"')][0]
        p2p.append(json.loads(line)["report"]["seconds"])
    cpu_agents += cpu(f"{work}/cpu-{i}")
    if e2e:
        cpu_transfer += float(open(f"{work}/cpu1-{i}").read()) - float(open(f"{work}/cpu0-{i}").read())
base = [float(open(f"{work}/base-{i}").read().split()[0]) for i in range(1, n + 1)]
name = "through the mirrors" if e2e else "p2p"
for name, v in ((name, p2p), ("direct from origin", base)):
    print(f"{name:20} p50 {q(v, .5):7.2f} s ({q(v, .5) / floor:.3f}× S/B)  p99 {q(v, .99):7.2f} s ({q(v, .99) / floor:.3f}×)  max {max(v):7.2f} s")
if e2e:
    print(f"first byte at the hosts: p50 {q(first, .5):.2f} s, max {max(first):.2f} s")
# Every piece an agent received came from the origin or from another agent.
moved = n * size + (n * size - egress)
print(f"origin egress (p2p): {egress / size:.3f} × S; agents' CPU: {cpu_agents:.1f} s in all, {cpu_agents / n:.2f} s per host")
print(f"agents' CPU per GiB moved (received + forwarded, {moved / gib:.2f} GiB): {cpu_agents / (moved / gib):.2f} CPU-s/GiB over their lives")
if e2e:
    print(f"  from the barrier to the last byte (the P2P transfer and the mirrors' copies): {cpu_transfer:.1f} s, "
          f"{cpu_transfer / (moved / gib):.2f} CPU-s/GiB moved")
if open(f"{work}/tls").read().strip() == "1":
    tls_cpu, ok = 0.0, 0
    for i in range(1, n + 1):
        tls_cpu += cpu(f"{work}/tls-srv-{i}") + cpu(f"{work}/tls-cli-{i}")
        got = open(f"{work}/tls-got-{i}").read().split()
        ok += bool(got) and int(got[0]) == size
    if ok != n:
        sys.exit(f"TCP+TLS baseline: only {ok} of {n} transfers complete")
    tls_moved = 2 * n * size
    print(f"TCP+TLS (curl from openssl s_server, a ring of the same hosts, {tls_moved / gib:.2f} GiB moved): "
          f"{tls_cpu:.1f} CPU-s, {tls_cpu / (tls_moved / gib):.2f} CPU-s/GiB")
PY
