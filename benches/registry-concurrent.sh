#!/usr/bin/env bash
# Registry memory and time under concurrency, on loopback.
#
# MODE=push (default): N concurrent uploads of SIZE_MIB each (every one a
# different blob: a shared random body plus a unique 8-byte tail), each a
# POST then one PUT with the body, side by side against `strata serve` and
# Debian's docker-registry (distribution 2.8). Each server is started fresh
# for each N, so its peak RSS (VmHWM) is that run's; every upload must
# answer 201 and a sample is read back by digest.
#
#   benches/registry-concurrent.sh                   # CLIENTS="100 1000" SIZE_MIB=8
#   CLIENTS=1000 SERVERS=strata benches/registry-concurrent.sh
#
# MODE=pull: 200 concurrent pulls of one 100 MiB blob, side by side from
# Debian's docker-registry and `strata serve` (each started fresh, so the
# peak RSS is the run's), all released at once by a barrier; every
# response must hash to the blob's digest.
#
#   MODE=pull benches/registry-concurrent.sh         # CLIENTS=200 SIZE_MIB=100
#
# Needs: python3, curl, docker-registry, a release build.
# Bounded: each load run is killed after LIMIT seconds (default 900);
# servers are stopped by PID and their data removed on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
strata="${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/strata}"
[ -x "$strata" ] || { echo "build first: cargo build --release" >&2; exit 1; }
mode="${MODE:-push}"
limit="${LIMIT:-900}"
work=$(mktemp -d /var/tmp/strata-conc-XXXXXX)
pid=""
stop() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi; }
trap 'stop; rm -rf "$work"' EXIT
# A thousand connections, each with an open upload file.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

[ "$mode" = push ] || [ "$mode" = pull ] || { echo "MODE is push or pull" >&2; exit 1; }
command -v docker-registry >/dev/null || { echo "docker-registry is not installed" >&2; exit 1; }
size_mib="${SIZE_MIB:-8}"
[ "$mode" = pull ] || echo "$(date -u +%Y-%m-%dT%H:%MZ); $(nproc) cores; $size_mib MiB uploads; $("$strata" --version 2>/dev/null || echo strata); docker-registry $(docker-registry --version 2>/dev/null | awk '{print $NF}'); load: $(uptime)"

wait_ready() {
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$1/v2/" >/dev/null && return 0; sleep 0.1; done
    echo "server on port $1 did not start" >&2; return 1
}

start_server() { # NAME PORT DATA
    case "$1" in
    strata)
        "$strata" serve --open-push --listen "127.0.0.1:$2" --data "$3" >"$work/$1.log" 2>&1 & pid=$! ;;
    docker-registry)
        cat >"$work/registry.yml" <<YML
version: 0.1
log: { level: error, accesslog: { disabled: true } }
storage: { filesystem: { rootdirectory: $3 } }
http: { addr: 127.0.0.1:$2 }
YML
        docker-registry serve "$work/registry.yml" >"$work/$1.log" 2>&1 & pid=$! ;;
    esac
    wait_ready "$2"
}

if [ "$mode" = pull ]; then
    head -c "$((${SIZE_MIB:-100} << 20))" /dev/urandom >"$work/blob"
    digest="sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)"
    echo "$(date -u +%Y-%m-%dT%H:%MZ); $(nproc) cores; ${CLIENTS:-200} pulls of ${SIZE_MIB:-100} MiB; load: $(uptime)"
    for server in ${SERVERS:-docker-registry strata}; do
        port=5793
        start_server "$server" "$port" "$work/data"
        # Pushed the same way to both: a POST, then a PUT with the body.
        loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$port/v2/bench/blobs/uploads/" | tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }')
        case "$loc" in http*) ;; *) loc="http://127.0.0.1:$port$loc" ;; esac
        case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
        curl -sf -X PUT -T "$work/blob" -H "Expect:" -H "Content-Type: application/octet-stream" "$loc${sep}digest=$digest" -o /dev/null
        timeout "$limit" python3 - "$digest" "${CLIENTS:-200}" "$pid" "$server" "$port" <<'PY'
import hashlib, http.client, sys, threading, time
digest, clients, pid, name, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
ok, bad = [], []
start = threading.Barrier(clients + 1)
def pull():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start.wait()
    c.request("GET", f"/v2/bench/blobs/{digest}")
    r = c.getresponse()
    h = hashlib.sha256()
    while True:
        b = r.read(1 << 20)
        if not b:
            break
        h.update(b)
    (ok if "sha256:" + h.hexdigest() == digest and r.status == 200 else bad).append(1)
threads = [threading.Thread(target=pull) for _ in range(clients)]
for th in threads: th.start()
start.wait()
t = time.perf_counter()
for th in threads: th.join()
dt = time.perf_counter() - t
hwm = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")][0].split()[1]
print(f"{name:16} {clients} concurrent pulls: {len(ok)} correct, {len(bad)} wrong, {dt:.1f}s; server peak RSS {int(hwm) / 1024:.1f} MiB", flush=True)
PY
        stop
        rm -rf "$work/data"
    done
    echo "load: $(cat /proc/loadavg)"
    exit 0
fi


for n in ${CLIENTS:-100 1000}; do
    for server in ${SERVERS:-docker-registry strata}; do
        port=5794
        start_server "$server" "$port" "$work/data"
        timeout "$limit" python3 - "$port" "$n" "$size_mib" "$pid" "$server" <<'PY'
import hashlib, http.client, os, sys, threading, time
port, n, size_mib, pid, name = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
threading.stack_size(256 << 10)
body = os.urandom(size_mib << 20)
prefix = hashlib.sha256(body)
ok, bad, digests = [], [], []
start = threading.Barrier(n + 1)

def upload(i):
    tail = i.to_bytes(8, "big")
    h = prefix.copy(); h.update(tail)
    digest = "sha256:" + h.hexdigest()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        start.wait()
        c.request("POST", f"/v2/bench/blobs/uploads/")
        r = c.getresponse(); r.read()
        if r.status != 202:
            raise RuntimeError(f"POST {r.status}")
        loc = r.getheader("Location")
        if loc.startswith("http"):
            loc = "/" + loc.split("/", 3)[3]
        sep = "&" if "?" in loc else "?"
        c.putrequest("PUT", f"{loc}{sep}digest={digest}")
        c.putheader("Content-Type", "application/octet-stream")
        c.putheader("Content-Length", str(len(body) + len(tail)))
        c.endheaders()
        c.send(memoryview(body)); c.send(tail)
        r = c.getresponse(); r.read()
        if r.status != 201:
            raise RuntimeError(f"PUT {r.status}")
        ok.append(digest)
    except Exception as e:
        bad.append(repr(e))

threads = [threading.Thread(target=upload, args=(i,)) for i in range(n)]
for th in threads: th.start()
start.wait()
t = time.perf_counter()
for th in threads: th.join()
dt = time.perf_counter() - t
hwm = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")][0].split()[1]
# Read a sample back by digest.
wrong = 0
for digest in ok[:: max(1, len(ok) // 10)]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", f"/v2/bench/blobs/{digest}")
    r = c.getresponse()
    if r.status != 200 or "sha256:" + hashlib.sha256(r.read()).hexdigest() != digest:
        wrong += 1
mib = n * size_mib
print(f"{name:16} {n:5} x {size_mib} MiB: {len(ok)} stored, {len(bad)} failed, {wrong} wrong on read-back; "
      f"{dt:6.1f} s ({mib / dt:5.0f} MiB/s); peak RSS {int(hwm) / 1024:6.1f} MiB", flush=True)
if bad:
    print("  first failures:", bad[:3], flush=True)
PY
        stop
        rm -rf "$work/data"
    done
done
