#!/usr/bin/env bash
# Hotfix vs full redeploy of the same change (10 changed files of a Tomcat
# app), side by side, and the redeploy gap as clients see it
# (benches/redeploy-gap.py: a new connection per request every 10 ms, and
# a keep-alive client; failed requests and the longest time without a 200)
# for the three ways to hand the IP over: the warm swap that detaches the
# old container first (`swap = "detach"`, the default), the warm swap that
# drains it first (`swap = "drain"`: the order strata used before), and the
# cold path (no dynamic range: stop, then start on the IP); and the
# default once more without the bridge anchor (src/deploy/anchor.rs),
# which is what clients on the host saw before it.
#
#   benches/deploy.sh            # RUNS=5 by default
#
# Needs: the Docker engine, hyperfine, python3, a release build, and the
# Debian packages (base-images/fetch-debs.sh). Creates networks
# strata-bench-warm/drain/cold (10.93.1-3.0/24) and removes them.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
strata="${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/strata}"
[ -x "$strata" ] || { echo "build first: cargo build --release" >&2; exit 1; }
runs="${RUNS:-5}"
work=$(mktemp -d /var/tmp/strata-deploy-bench-XXXXXX)
export STRATA_STORE="$work/store"
apps=(warm drain cold)
cleanup() {
    for a in "${apps[@]}"; do
        docker ps -aq --filter "label=org.strata.app=bench-$a" | xargs -r docker rm -f >/dev/null
        docker network rm "strata-bench-$a" >/dev/null 2>&1 || true
        docker volume rm "strata-bench-$a-1-logs" >/dev/null 2>&1 || true
        docker images -q "strata-deploy/bench-$a" | xargs -r docker rmi -f >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# v1: the sample webapp with 8 more static files; v2: 10 files changed
# (8 static files, index.html and a JSP).
for v in v1 v2; do
    cp -r "$here/base-images/webapp" "$work/$v"
    echo ok > "$work/$v/health.txt"
    for i in 1 2 3 4 5 6 7 8; do
        head -c 20000 /dev/urandom | base64 > "$work/$v/static-$i.txt"
    done
done
echo "<h1>v2</h1>" > "$work/v2/index.html"
sed -i 's/unicode=/unicode-v2=/' "$work/v2/info.jsp"
"$strata" build -c "$here/deploy/examples/offline.toml" --layout "$work/oci" \
    --tier v1 --tier v2 --war "v1=$work/v1" --war "v2=$work/v2" 2>&1 | tail -n 1
echo "changed files v1 → v2: $("$strata" diff --layout "$work/oci" v1 v2 2>/dev/null | grep -c '^M')"

spec() {  # NAME OCTET EXTRA
    mkdir -p "$work/apps"
    cat > "$work/apps/bench-$1.toml" <<TOML
name = "bench-$1"
memory_mib = 512
stop_grace = "10s"
[network]
name = "strata-bench-$1"
subnet = "10.93.$2.0/24"
$3
pool = "10.93.$2.10-10.93.$2.20"
[health]
kind = "http"
port = 8080
path = "/health.txt"
interval = "50ms"
retries = 1200
[hotfix]
paths = ["/var/lib/tomcat10/webapps/**"]
TOML
}
spec warm 1 'dynamic_range = "10.93.1.128/25"'
spec drain 2 'dynamic_range = "10.93.2.128/25"'
sed -i '1a swap = "drain"' "$work/apps/bench-drain.toml"
spec cold 3 ''
s() { "$strata" "$@" --apps "$work/apps" --data "$work/data" --layout "$work/oci"; }

for a in "${apps[@]}"; do s deploy "bench-$a" --image v1 >/dev/null 2>&1; done
ip=$(s status bench-warm --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["instances"][0]["ip"])')
echo "instance bench-warm-1 on $ip"

echo
echo "== hotfix vs full redeploy of the same change (v1 → v2), end to end"
q() { printf '%q ' "$strata" "$@" --apps "$work/apps" --data "$work/data" --layout "$work/oci"; }
# One --prepare per command: each run starts from v1.
hyperfine --runs "$runs" --export-json "$work/h.json" \
    --prepare "$(q deploy bench-warm --image v1 --redeploy) >/dev/null 2>&1" \
    --prepare "$(q deploy bench-warm --image v1 --redeploy) >/dev/null 2>&1" \
    --prepare "$(q deploy bench-cold --image v1 --redeploy) >/dev/null 2>&1" \
    -n "hotfix v1→v2" "$(q hotfix bench-warm --image v2) >/dev/null 2>&1" \
    -n "redeploy v1→v2 (warm swap)" "$(q deploy bench-warm --image v2 --redeploy) >/dev/null 2>&1" \
    -n "redeploy v1→v2 (cold)" "$(q deploy bench-cold --image v2 --redeploy) >/dev/null 2>&1"
python3 - "$work/h.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
h = r["hotfix v1→v2"]
for name, m in r.items():
    print(f"{name:<30} median {m*1000:8.0f} ms   {m/h:5.1f} × the hotfix")
PY

echo
echo "== redeploy gap as clients see it (a new connection every 10 ms; one keep-alive connection)"
# ROW:APP:ANCHOR — `warm-no-anchor` is the default swap with the bridge
# anchor turned off (STRATA_BRIDGE_ANCHOR=off): the figure before it.
for row in warm:warm:on warm-no-anchor:warm:off drain:drain:on cold:cold:on; do
    IFS=: read -r label a anchor <<< "$row"
    ip=$(s status "bench-$a" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["instances"][0]["ip"])')
    : > "$work/gaps-$label"
    for i in $(seq 1 "$runs"); do
        img=$([ $((i % 2)) = 1 ] && echo v1 || echo v2)
        rm -f "$work/stop"
        python3 "$here/benches/redeploy-gap.py" "$ip" 8080 /health.txt "$work/stop" >> "$work/gaps-$label" &
        poller=$!
        sleep 0.5
        STRATA_BRIDGE_ANCHOR=$anchor s deploy "bench-$a" --image "$img" --redeploy >/dev/null 2>&1
        sleep 1.5
        touch "$work/stop"
        wait "$poller"
    done
    python3 - "$label" "$work/gaps-$label" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
for c in ("new", "keep"):
    gaps = sorted(r[c]["longest_without_200_s"] for r in runs)
    failed = [r[c]["failed"] for r in runs]
    slow = max(r[c]["slowest_ok_s"] for r in runs)
    print(f"{sys.argv[1]:<14} {c:<5} longest without a 200: median {gaps[len(gaps)//2]*1000:5.0f} ms, "
          f"max {gaps[-1]*1000:5.0f} ms; failed requests per redeploy: {failed}; slowest ok request {slow*1000:.0f} ms")
PY
done
