#!/usr/bin/env bash
# 200 concurrent pulls of one 100 MiB blob from `strata serve` on loopback:
# every response must hash to the blob's digest; reports the wall time and
# the server's peak RSS (VmHWM).
#
#   benches/registry-concurrent.sh        # CLIENTS=200 SIZE_MIB=100
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
strata="${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/strata}"
[ -x "$strata" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d /var/tmp/strata-conc-XXXXXX)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
head -c "$((${SIZE_MIB:-100} << 20))" /dev/urandom >"$work/blob"
digest="sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)"
"$strata" serve --open-push --listen 127.0.0.1:5793 --data "$work/data" >"$work/out" 2>&1 & pid=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:5793/v2/ >/dev/null && break; sleep 0.1; done
curl -sf -X POST -T "$work/blob" -H "Expect:" "http://127.0.0.1:5793/v2/bench/blobs/uploads?digest=$digest" -o /dev/null
python3 - "$digest" "${CLIENTS:-200}" "$pid" <<'PY'
import hashlib, http.client, sys, threading, time
digest, clients, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ok, bad = [], []
def pull():
    c = http.client.HTTPConnection("127.0.0.1", 5793, timeout=300)
    c.request("GET", f"/v2/bench/blobs/{digest}")
    r = c.getresponse()
    h = hashlib.sha256()
    while True:
        b = r.read(1 << 20)
        if not b:
            break
        h.update(b)
    (ok if "sha256:" + h.hexdigest() == digest and r.status == 200 else bad).append(1)
t = time.perf_counter()
threads = [threading.Thread(target=pull) for _ in range(clients)]
for th in threads: th.start()
for th in threads: th.join()
dt = time.perf_counter() - t
hwm = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")][0].split()[1]
print(f"{clients} concurrent pulls: {len(ok)} correct, {len(bad)} wrong, {dt:.1f}s; server peak RSS {int(hwm) / 1024:.1f} MiB")
PY
