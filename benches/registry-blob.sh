#!/usr/bin/env bash
# One 1 GiB blob, side by side on loopback: strata serve vs Debian's
# docker-registry (distribution 2.8), same client (curl, and Python's
# http.client for chunked uploads), same data, in one run.
#
#   benches/registry-blob.sh            # SIZE_MIB=1024 RUNS=3 by default
#
# Needs: docker-registry, curl, python3, a release build.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
strata="${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/strata}"
[ -x "$strata" ] || { echo "build first: cargo build --release" >&2; exit 1; }
size_mib="${SIZE_MIB:-1024}"
runs="${RUNS:-3}"
work=$(mktemp -d /var/tmp/strata-regbench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

python3 - "$work/blob" "$size_mib" <<'PY'
import os, sys
# Half-compressible bytes, so no filesystem or transport trick applies.
block = os.urandom(1 << 19) + bytes(1 << 19)
with open(sys.argv[1], "wb") as f:
    for _ in range(int(sys.argv[2])):
        f.write(block)
PY
digest="sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)"
echo "$(date -u +%Y-%m-%dT%H:%MZ); blob: $size_mib MiB $digest; $(nproc) cores; load: $(uptime)"

cat > "$work/registry.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $work/dr-data }, delete: { enabled: true } }
http: { addr: 127.0.0.1:5791 }
YML
docker-registry serve "$work/registry.yml" >"$work/dr.log" 2>&1 & pids+=($!)
"$strata" serve --open-push --listen 127.0.0.1:5792 --data "$work/strata-data" >"$work/st.out" 2>&1 & pids+=($!)
export DR_PID="${pids[0]}" ST_PID="${pids[1]}"
for port in 5791 5792; do
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
done

WORK="$work" python3 - "$work/blob" "$digest" "$runs" <<'PY'
import http.client, os, subprocess, sys, time, statistics
path, digest, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = os.path.getsize(path)
servers = {"docker-registry 2.8": 5791, "strata serve": 5792}
pid_of = {"docker-registry 2.8": os.environ["DR_PID"], "strata serve": os.environ["ST_PID"]}
tick = os.sysconf("SC_CLK_TCK")

def cpu(pid):
    # utime + stime of the server process, in seconds.
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick

def post(port, repo):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("POST", f"/v2/{repo}/blobs/uploads/")
    r = c.getresponse(); r.read()
    assert r.status == 202, r.status
    return r.getheader("Location")

def url(port, loc):
    return loc if loc.startswith("http") else f"http://127.0.0.1:{port}{loc}"

def put_monolithic(port, repo):
    loc = url(port, post(port, repo))
    sep = "&" if "?" in loc else "?"
    t = time.perf_counter()
    out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
                          "-H", "Content-Type: application/octet-stream", "-H", "Expect:",
                          "-T", path, f"{loc}{sep}digest={digest}"],
                         capture_output=True, text=True)
    dt = time.perf_counter() - t
    assert out.stdout == "201", out
    return dt

def put_chunked(port, repo, chunk=8 << 20):
    loc = url(port, post(port, repo))
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, blocksize=1 << 20)
    with open(path, "rb") as f:
        off = 0
        while off < size:
            data = f.read(chunk)
            hostpath = loc.split("127.0.0.1", 1)[1].split("/", 1)[1]
            c.request("PATCH", "/" + hostpath, body=data,
                      headers={"Content-Range": f"{off}-{off + len(data) - 1}",
                               "Content-Type": "application/octet-stream"})
            r = c.getresponse(); r.read()
            assert r.status == 202, (r.status, off)
            loc = url(port, r.getheader("Location"))
            off += len(data)
    hostpath = loc.split("127.0.0.1", 1)[1].split("/", 1)[1]
    sep = "&" if "?" in hostpath else "?"
    c.request("PUT", f"/{hostpath}{sep}digest={digest}")
    r = c.getresponse(); r.read()
    assert r.status == 201, r.status
    return time.perf_counter() - t

def get(port, repo):
    t = time.perf_counter()
    out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{http_code}",
                          f"http://127.0.0.1:{port}/v2/{repo}/blobs/{digest}"], capture_output=True, text=True)
    assert out.stdout == "200", out
    return time.perf_counter() - t

def delete_blob(name, port):
    # Each upload must really store the blob again: remove it between runs.
    if name.startswith("docker"):
        c = http.client.HTTPConnection("127.0.0.1", port)
        c.request("DELETE", f"/v2/bench/blobs/{digest}"); c.getresponse().read()
    else:
        p = os.path.join(os.environ.get("WORK", ""), "strata-data/store/blobs/sha256", digest.split(":")[1])
        if os.path.exists(p):
            os.remove(p)

mib = size / (1 << 20)
rows = {}
for name, port in servers.items():
    mono, chunked, got, got_cpu = [], [], [], []
    for _ in range(runs):
        delete_blob(name, port)
        mono.append(put_monolithic(port, "bench"))
        c0 = cpu(pid_of[name])
        got.append(get(port, "bench"))
        got_cpu.append(cpu(pid_of[name]) - c0)
        delete_blob(name, port)
        chunked.append(put_chunked(port, "bench"))
    rows[name] = (statistics.median(mono), statistics.median(chunked), statistics.median(got))
    print(f"{name:20} PUT {rows[name][0]:.2f}s ({mib / rows[name][0]:.0f} MiB/s)  "
          f"8MiB PATCHes {rows[name][1]:.2f}s ({mib / rows[name][1]:.0f} MiB/s)  "
          f"GET {rows[name][2]:.2f}s ({mib / rows[name][2]:.0f} MiB/s), server CPU "
          f"{statistics.median(got_cpu):.2f}s   median of {runs}")
    print(f"{'':20} each run: PUT {' '.join(f'{x:.2f}' for x in mono)}  PATCHes "
          f"{' '.join(f'{x:.2f}' for x in chunked)}  GET {' '.join(f'{x:.2f}' for x in got)}")
d, s = rows["docker-registry 2.8"], rows["strata serve"]
print("load:", open("/proc/loadavg").read().strip())
print(f"upload throughput strata/docker-registry = {d[0] / s[0]:.2f}x, download = {d[2] / s[2]:.2f}x, "
      f"strata chunked/monolithic = {s[0] / s[1]:.2f}x")
PY
