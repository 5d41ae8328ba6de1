#!/usr/bin/env bash
# A cluster on one machine: K Docker hosts on a shaped LAN, each a network
# namespace with its own dockerd (Debian's docker.io) whose API listens on
# tcp://HOST_IP:2376 with TLS (--tlsverify, certificates made here).
#
#   deploy/lab/lab.sh up [--hosts K] [--dir DIR] [--prefix P] [--mbit B] [--strata BIN]
#   deploy/lab/lab.sh status [--dir DIR]
#   deploy/lab/lab.sh down [--dir DIR]
#   deploy/lab/lab.sh exec [--dir DIR] [--ns client|origin|hN] -- CMD…   # CMD on the LAN
#   deploy/lab/lab.sh docker [--dir DIR] hN ARGS…                # docker CLI, over TLS
#   deploy/lab/lab.sh hosts [--dir DIR]                           # the spec's `hosts = […]`
#   deploy/lab/lab.sh link [--dir DIR] hN down|up                 # cut a host off the LAN, or back
#
# The LAN is 10.77.0.0/24, a bridge in a namespace of its own (P-sw); every
# link to it is a veth shaped with tc tbf at B Mbit/s (default 1000) in both
# directions, as in benches/fanout.sh:
#   .1            nothing (Docker's notional gateway of the macvlan network)
#   .2            P-client: the operator's machine; run strata here (`exec`)
#   .3            P-origin: with --strata, `strata serve` (registry :5000,
#                 P2P origin :5001), the origin every host's agent joins
#   .11 … .10+K   P-h1 … P-hK: dockerd, eth0 is the host's LAN interface
#   .100 … .149   the example spec's lease pool, .160/27 its dynamic range
# Nothing of the lab is routed from the machine's own namespace: the LAN
# is reachable only from its namespaces, so it never clashes with the
# machine's networks.
#
# With --strata BIN, `up` also starts the release path: the origin above,
# and on every host a `strata agent` (QUIC on HOST_IP:5001, cluster
# certificates made here) whose pull-through registry listens on the
# host's 127.0.0.1:5002, and which reaches its own engine through the
# engine's unix socket. A prewarm with --load makes each engine pull
# `127.0.0.1:5002/REPO@DIGEST` from its agent: Docker trusts a loopback
# registry over plain HTTP without any daemon setting, while the engine's
# `registry-mirrors` only ever applies to Docker Hub names, so it cannot
# put an agent in front of a private origin. The deploy then finds the
# image in the engine by its ID and only tags it. The engines also list
# the origin in `insecure-registries`, so a host can pull from the origin
# directly (the baseline of benches/lab-release.sh). A push token for the
# origin is in DIR/origin/token.
#
# Everything `up` starts is recorded in DIR/lab.state before it starts
# (namespaces, veths, cgroups, dockerd PIDs with their start time), so
# `down` removes exactly that, also after `up` crashed or was killed:
# containers (each engine's --cgroup-parent is P-hN), engines, mounts under
# DIR, namespaces, and DIR itself. `up` is idempotent: a complete lab whose
# engines answer is left alone; a partial one is taken down first.
# Needs root, iproute2, docker.io, openssl, util-linux (nsenter).
set -euo pipefail

lan=10.77.0
cmd=""
dir=/var/tmp/strata-lab
hosts=4
prefix=slab
mbit=1000
strata_bin=
ns_arg=client
hosts_given=
prefix_given=
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts) hosts="$2"; hosts_given=1; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        --prefix) prefix="$2"; prefix_given=1; shift 2 ;;
        --mbit) mbit="$2"; shift 2 ;;
        --strata) strata_bin="$2"; shift 2 ;;
        --ns) ns_arg="$2"; shift 2 ;;
        --) shift; break ;;
        -*) echo "lab: unknown option $1" >&2; exit 2 ;;
        *) if [ -z "$cmd" ]; then cmd="$1"; shift; else break; fi ;;
    esac
done

die() { echo "lab: $*" >&2; exit 1; }
say() { echo "lab: $*" >&2; }

[ -n "$cmd" ] || die "usage: lab.sh up|status|down|exec|docker|hosts [--dir DIR] … (see the top of $0)"
if ! [[ "$hosts" =~ ^[0-9]+$ ]] || [ "$hosts" -lt 1 ] || [ "$hosts" -gt 40 ]; then die "--hosts must be 1..40"; fi
if ! [[ "$mbit" =~ ^[1-9][0-9]*$ ]]; then die "--mbit must be a whole number of Mbit/s"; fi
[[ "$prefix" =~ ^[a-z][a-z0-9-]{0,11}$ ]] || die "--prefix must be [a-z][a-z0-9-]*, at most 12 characters"
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
dir="${dir%/}"
state="$dir/lab.state"

# The recorded prefix and host count win over the flags for every command
# but a fresh `up`.
read_state() {
    [ -f "$state" ] || return 1
    prefix=$(awk '$1 == "prefix" { print $2; exit }' "$state")
    hosts=$(awk '$1 == "hosts" { print $2; exit }' "$state")
    if [ -z "$prefix" ] || [ -z "$hosts" ]; then die "$state is not a lab's record"; fi
}
record() { echo "$*" >>"$state"; }
ns_path() { echo "/var/run/netns/$1"; }
in_ns() { local ns="$1"; shift; nsenter --net="$(ns_path "$ns")" -- "$@"; }
host_ip() { echo "$lan.$((10 + $1))"; }
origin_ip="$lan.3"

# A process's start time (clock ticks since boot): a reused PID has another.
start_time() { awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null || true; }
engine() { docker -H "unix://$dir/h$1/docker.sock" "${@:2}"; }
tls_docker() {
    local i="$1"; shift
    in_ns "$prefix-client" env DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH="$dir/tls/client" \
        docker -H "tcp://$(host_ip "$i"):2376" "$@"
}

lock() {
    mkdir -p "$(dirname "$dir")"
    exec 9>"$dir.lock"
    flock -w 30 9 || die "another lab.sh holds $dir.lock"
}

# --- down -------------------------------------------------------------------

kill_recorded_pid() {
    local pid="$1" started="$2"
    [ "$(start_time "$pid")" = "$started" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 200); do
        [ "$(start_time "$pid")" = "$started" ] || return 0
        sleep 0.1
    done
    say "pid $pid did not stop within 20 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# Every process in a cgroup the lab made (its engines' containers), then
# the cgroup itself, deepest first, in every hierarchy.
kill_cgroup() {
    local name="$1" root d p
    for root in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
        d="$root$name"
        [ -d "$d" ] || continue
        for _ in 1 2 3; do
            while read -r p; do
                kill -KILL "$p" 2>/dev/null || true
            done < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
            sleep 0.1
        done
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
}

down() {
    if ! read_state; then
        say "no lab recorded in $dir: nothing to take down"
        rm -rf "$dir"
        return 0
    fi
    say "taking down the lab in $dir (prefix $prefix)"
    local kind a b c
    # strata's processes (agents, origin) first: they use the engines.
    while read -r kind a b c; do
        [ "$kind" = proc ] && kill_recorded_pid "$a" "$b"
    done <"$state"
    # Engines first, gracefully: containers removed, then dockerd stopped
    # (it stops its containerd).
    while read -r kind a b c; do
        [ "$kind" = pid ] || continue
        if [ "$(start_time "$a")" = "$b" ]; then
            local ids
            ids=$(timeout 20 docker -H "unix://$dir/$c/docker.sock" ps -aq 2>/dev/null || true)
            # shellcheck disable=SC2086
            [ -z "$ids" ] || timeout 60 docker -H "unix://$dir/$c/docker.sock" rm -f $ids >/dev/null 2>&1 || true
        fi
        kill_recorded_pid "$a" "$b"
    done <"$state"
    # What a crash may have left: containers (by cgroup), then every process
    # still inside one of the lab's namespaces (containerd, shims).
    while read -r kind a _; do
        [ "$kind" = cgroup ] && kill_cgroup "$a"
    done <"$state"
    while read -r kind a _; do
        if [ "$kind" != netns ] || [ ! -e "$(ns_path "$a")" ]; then continue; fi
        local p
        for p in $(ip netns pids "$a" 2>/dev/null); do
            [ "$p" = "$$" ] || kill -KILL "$p" 2>/dev/null || true
        done
    done <"$state"
    # Mounts the engines left under DIR (overlays, shm, netns files).
    local m
    for _ in 1 2 3; do
        while read -r m; do
            umount -l "$m" 2>/dev/null || true
        done < <(awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    done
    # Namespaces last (their veths go with them), in reverse order.
    while read -r kind a b _; do
        case "$kind" in
            veth) ip -n "$a" link del "$b" 2>/dev/null || true ;;
            netns) [ -e "$(ns_path "$a")" ] && { ip netns del "$a" || say "could not delete namespace $a"; } ;;
        esac
    done < <(tac "$state")
    rm -rf "$dir"
    say "down: nothing of the lab is left"
}

# --- up ---------------------------------------------------------------------

make_tls() {
    local t="$dir/tls" i ip
    mkdir -p "$t/client"
    (
        cd "$t"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
            -subj "/CN=strata lab CA ($prefix)" -keyout ca-key.pem -out ca.pem 2>/dev/null
        for i in $(seq 1 "$hosts"); do
            ip=$(host_ip "$i")
            mkdir -p "h$i"
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -subj "/CN=$prefix-h$i" -keyout "h$i/key.pem" -out "h$i/req.pem" 2>/dev/null
            printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n' "$ip" >"h$i/ext.cnf"
            openssl x509 -req -in "h$i/req.pem" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
                -days 30 -extfile "h$i/ext.cnf" -out "h$i/cert.pem" 2>/dev/null
            cp ca.pem "h$i/ca.pem"
            rm -f "h$i/req.pem" "h$i/ext.cnf"
        done
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=strata lab client" -keyout client/key.pem -out client/req.pem 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\n' >client/ext.cnf
        openssl x509 -req -in client/req.pem -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -days 30 -extfile client/ext.cnf -out client/cert.pem 2>/dev/null
        cp ca.pem client/ca.pem
        rm -f client/req.pem client/ext.cnf ca.srl
        chmod 600 ./*key.pem ./*/key.pem
    )
}

add_ns() {
    record netns "$1"
    ip netns add "$1"
    ip -n "$1" link set lo up
}

# One LAN port: veth pN in the switch namespace, eth0 in $ns, both ends
# shaped to B Mbit/s (upload at the host, download at the switch port).
plug() {
    local ns="$1" port="$2" ip="$3" burst
    burst=$((mbit * 10 / 8))
    [ "$burst" -ge 64 ] || burst=64
    record veth "$prefix-sw" "$port"
    ip -n "$prefix-sw" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$prefix-sw" link set "$port" master br0 up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    in_ns "$ns" tc qdisc add dev eth0 root tbf rate "${mbit}mbit" burst "${burst}kb" latency 20ms
    in_ns "$prefix-sw" tc qdisc add dev "$port" root tbf rate "${mbit}mbit" burst "${burst}kb" latency 20ms
}

start_engine() {
    local i="$1" h="$dir/h$1" ip pid
    ip=$(host_ip "$i")
    mkdir -p "$h/data" "$h/exec"
    # The origin (with --strata) is a plain-HTTP registry on the LAN.
    printf '{ "insecure-registries": ["%s:5000"] }\n' "$origin_ip" >"$h/daemon.json"
    record cgroup "$prefix-h$i"
    # nsenter, not `ip netns exec`: the latter remounts /sys and dockerd
    # then fails ("Devices cgroup isn't mounted"). --config-file keeps the
    # machine's /etc/docker/daemon.json out of it.
    setsid nsenter --net="$(ns_path "$prefix-h$i")" -- dockerd \
        --config-file "$h/daemon.json" --data-root "$h/data" --exec-root "$h/exec" \
        --pidfile "$h/docker.pid" -H "unix://$h/docker.sock" -H "tcp://$ip:2376" \
        --tlsverify --tlscacert "$dir/tls/h$i/ca.pem" --tlscert "$dir/tls/h$i/cert.pem" \
        --tlskey "$dir/tls/h$i/key.pem" --bridge none --iptables=false --ip-forward=false \
        --ip-masq=false --storage-driver overlay2 --cgroup-parent "/$prefix-h$i" \
        </dev/null >"$h/dockerd.log" 2>&1 9>&- &
    pid=$!
    # setsid and nsenter exec, so $! is dockerd itself. It must not inherit
    # the lock (fd 9): it outlives this script.
    for _ in $(seq 1 50); do
        [ -n "$(start_time "$pid")" ] && break
        sleep 0.02
    done
    record pid "$pid" "$(start_time "$pid")" "h$i"
    [ -n "$(start_time "$pid")" ] || { tail -n 20 "$h/dockerd.log" >&2; die "dockerd of h$i exited at once"; }
}

wait_engine() {
    local i="$1"
    for _ in $(seq 1 120); do
        if engine "$i" version --format '{{.Server.Version}}' >/dev/null 2>&1 \
            && tls_docker "$i" version --format '{{.Server.Version}}' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    tail -n 20 "$dir/h$i/dockerd.log" >&2 || true
    die "the engine of h$i did not answer on unix://$dir/h$i/docker.sock and tcp://$(host_ip "$i"):2376 within 60 s"
}

# Starts a recorded process in namespace $1 (log $2), the rest its command.
spawn() {
    local ns="$1" log="$2" pid; shift 2
    setsid nsenter --net="$(ns_path "$ns")" -- "$@" </dev/null >"$log" 2>&1 9>&- &
    pid=$!
    for _ in $(seq 1 50); do
        [ -n "$(start_time "$pid")" ] && break
        sleep 0.02
    done
    record proc "$pid" "$(start_time "$pid")" "$ns"
    [ -n "$(start_time "$pid")" ] || { tail -n 20 "$log" >&2; die "$* exited at once"; }
}

# The release path: the origin in its namespace, an agent on every host.
start_strata() {
    local bin o="$dir/origin" i n
    bin=$(command -v "$strata_bin") || die "--strata $strata_bin: no such program"
    case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
    echo "strata $bin" >>"$state"
    say "starting the origin (strata serve) on $origin_ip and $hosts agents"
    mkdir -p "$o"
    "$bin" cluster init --dir "$dir/ca" >/dev/null 2>&1 || die "strata cluster init failed"
    for n in origin $(seq -f 'h%g' 1 "$hosts"); do
        "$bin" cluster issue "$n" --dir "$dir/ca" --out "$dir/certs" >/dev/null 2>&1 \
            || die "strata cluster issue $n failed"
    done
    "$bin" token create lab --role admin --data "$o/data" >"$o/token" 2>/dev/null \
        || die "strata token create failed"
    chmod 600 "$o/token"
    spawn "$prefix-origin" "$o/serve.log" "$bin" serve --listen "$origin_ip:5000" --data "$o/data" \
        --p2p-listen "$origin_ip:5001" --p2p-certs "$dir/certs"
    for _ in $(seq 1 100); do
        in_ns "$prefix-origin" curl -sf -o /dev/null "http://$origin_ip:5000/v2/" -H "Authorization: Bearer $(cat "$o/token")" && break
        sleep 0.1
    done
    in_ns "$prefix-origin" curl -sf -o /dev/null "http://$origin_ip:5000/v2/" -H "Authorization: Bearer $(cat "$o/token")" \
        || { tail -n 20 "$o/serve.log" >&2; die "the origin did not answer on http://$origin_ip:5000 within 10 s"; }
    for i in $(seq 1 "$hosts"); do
        mkdir -p "$dir/h$i/agent"
        spawn "$prefix-h$i" "$dir/h$i/agent.log" env DOCKER_HOST="unix://$dir/h$i/docker.sock" \
            "$bin" agent --name "h$i" --certs "$dir/certs" --origin "$origin_ip:5001" \
            --listen "$(host_ip "$i"):5001" --data "$dir/h$i/agent/data" \
            --registry "http://$origin_ip:5000" --mirror-listen 127.0.0.1:5002
    done
    # Every agent registered with the origin (prewarm's host list).
    for _ in $(seq 1 300); do
        n=$(agents_registered)
        [ "$n" = "$hosts" ] && return 0
        sleep 0.1
    done
    tail -n 5 "$dir"/h*/agent.log >&2 || true
    die "only ${n:-0} of $hosts agents registered with the origin within 30 s"
}

agents_registered() {
    in_ns "$prefix-origin" curl -sf "http://$origin_ip:5000/strata/api/hosts" \
        -H "Authorization: Bearer $(cat "$dir/origin/token")" 2>/dev/null \
        | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0
}

healthy() {
    read_state || return 1
    [ -f "$dir/up.done" ] || return 1
    local i
    for i in $(seq 1 "$hosts"); do
        tls_docker "$i" version --format '{{.Server.Version}}' >/dev/null 2>&1 || return 1
    done
    # Asked for the release path: the origin and every agent answer.
    if [ -n "$strata_bin" ]; then
        grep -q '^strata ' "$state" || return 1
        [ "$(agents_registered)" = "$hosts" ] || return 1
    fi
}

up_failed() {
    trap - EXIT INT TERM
    if [ "$1" -ne 0 ]; then
        say "up failed: cleaning up"
        down
    fi
    exit "$1"
}

up() {
    if [ -f "$state" ]; then
        # Flags left out keep what the lab has; flags given must match it.
        local want="$hosts" want_prefix="$prefix"
        if healthy && { [ -z "$hosts_given" ] || [ "$hosts" = "$want" ]; } \
            && { [ -z "$prefix_given" ] || [ "$prefix" = "$want_prefix" ]; }; then
            say "the lab in $dir is up already ($hosts hosts, prefix $prefix)"
            hosts_line
            return 0
        fi
        say "the lab in $dir is partial or not what was asked for: taking it down first"
        down
        [ -n "$hosts_given" ] && hosts="$want"
        [ -n "$prefix_given" ] && prefix="$want_prefix"
    fi
    local n
    for n in sw client origin $(seq -f 'h%g' 1 "$hosts"); do
        [ ! -e "$(ns_path "$prefix-$n")" ] \
            || die "namespace $prefix-$n exists but $dir does not record it: another lab (--dir, --prefix) or a leftover (ip netns del $prefix-$n)"
    done
    command -v dockerd >/dev/null || die "dockerd is missing (apt-get install docker.io)"
    command -v openssl >/dev/null || die "openssl is missing"
    mkdir -p "$dir"
    printf 'prefix %s\nhosts %s\nmbit %s\n' "$prefix" "$hosts" "$mbit" >"$state"
    # Any failure or interruption from here on takes down what was made.
    trap 'up_failed $?' EXIT
    trap 'exit 130' INT TERM
    say "making TLS certificates in $dir/tls"
    make_tls
    # The switch: a bridge in a namespace of its own, so LAN frames never
    # pass the machine's iptables (Docker's rules) or conntrack.
    add_ns "$prefix-sw"
    in_ns "$prefix-sw" sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
    ip -n "$prefix-sw" link add br0 type bridge stp_state 0 forward_delay 0
    ip -n "$prefix-sw" link set br0 up
    add_ns "$prefix-client"
    plug "$prefix-client" pc "$lan.2"
    local i
    for i in $(seq 1 "$hosts"); do
        add_ns "$prefix-h$i"
        plug "$prefix-h$i" "p$i" "$(host_ip "$i")"
    done
    [ -z "$strata_bin" ] || { add_ns "$prefix-origin"; plug "$prefix-origin" po "$origin_ip"; }
    say "starting $hosts engines"
    for i in $(seq 1 "$hosts"); do start_engine "$i"; done
    for i in $(seq 1 "$hosts"); do wait_engine "$i"; done
    [ -z "$strata_bin" ] || start_strata
    trap - EXIT INT TERM
    touch "$dir/up.done"
    say "up: $hosts hosts on $lan.0/24 at ${mbit} Mbit/s; run strata on the LAN with: $0 exec --dir $dir -- strata …"
    [ -z "$strata_bin" ] || say "origin: http://$origin_ip:5000 (push token in $dir/origin/token), an agent on every host"
    hosts_line
}

hosts_line() {
    local i out=()
    for i in $(seq 1 "$hosts"); do out+=("\"tcp://$(host_ip "$i"):2376?tls=$dir/tls/client\""); done
    local IFS=,
    echo "hosts = [${out[*]}]"
}

status() {
    read_state || { echo "no lab in $dir"; return 3; }
    echo "lab in $dir: prefix $prefix, $hosts hosts, LAN $lan.0/24, client $prefix-client ($lan.2)"
    local i pid ok=0 line
    for i in $(seq 1 "$hosts"); do
        line=$(awk -v h="h$i" '$1 == "pid" && $4 == h { print $2, $3 }' "$state")
        pid=${line%% *}
        if [ -n "$pid" ] && [ "$(start_time "$pid")" = "${line#* }" ] \
            && tls_docker "$i" info --format '{{.ServerVersion}}' >/dev/null 2>&1; then
            echo "  h$i $(host_ip "$i") dockerd pid $pid: up, $(tls_docker "$i" ps -q | wc -l) containers running"
        else
            echo "  h$i $(host_ip "$i"): DOWN"
            ok=1
        fi
    done
    if grep -q '^strata ' "$state"; then
        local n
        n=$(agents_registered)
        echo "  origin $origin_ip: http://$origin_ip:5000, $n of $hosts agents registered"
        [ "$n" = "$hosts" ] || ok=1
    fi
    return "$ok"
}

case "$cmd" in
    up) [ "$(id -u)" = 0 ] || die "needs root"; lock; up ;;
    down) [ "$(id -u)" = 0 ] || die "needs root"; lock; down; rm -f "$dir.lock" ;;
    status) status ;;
    hosts) read_state || die "no lab in $dir"; hosts_line ;;
    exec)
        read_state || die "no lab in $dir"
        [ $# -gt 0 ] || die "exec: which command?"
        in_ns "$prefix-$ns_arg" "$@"
        ;;
    docker)
        read_state || die "no lab in $dir"
        h="${1:-}"; [[ "$h" =~ ^h[0-9]+$ ]] || die "docker: which host (h1…h$hosts)?"
        shift
        tls_docker "${h#h}" "$@"
        ;;
    link)
        # A host cut off (its switch port down): its engine and containers
        # keep running, unreachable, as after a cable or switch failure.
        [ "$(id -u)" = 0 ] || die "needs root"
        read_state || die "no lab in $dir"
        h="${1:-}"; [[ "$h" =~ ^h[0-9]+$ ]] && [ "${h#h}" -le "$hosts" ] || die "link: which host (h1…h$hosts)?"
        case "${2:-}" in up|down) ;; *) die "link $h: up or down?" ;; esac
        ip -n "$prefix-sw" link set "p${h#h}" "$2"
        say "$h's link is $2"
        ;;
    *) die "unknown command $cmd: up, status, down, exec, docker, hosts or link" ;;
esac
