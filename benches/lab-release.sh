#!/usr/bin/env bash
# A release across a lab of K hosts (deploy/lab/lab.sh, 2 Tomcat instances
# per host on macvlan, engines over TLS), through strata's release path
# side by side with every host pulling from the origin directly:
#
#   p2p     strata release --push ORIGIN --server ORIGIN --load: push, the
#           agents prewarm the image over P2P and each engine pulls it from
#           its own agent, then the deploy (which finds it by ID).
#   direct  the same build and push (with gzip layers: the lab's engines,
#           Docker 20.10, cannot read zstd), then every host's engine pulls
#           the image from the origin at once (docker pull), then the deploy.
#
# Three releases each: b1 (the whole stack: first deploy), b2 (a page and
# 4 MiB of static bytes changed: hotfix), b3 (the same plus an env change:
# rolling redeploy). Each is timed from its first command to every
# instance serving the new version to a client on the LAN; the origin's
# egress is read off its LAN port (ip -s link) and given in copies of the
# release's new layers.
#
#   sudo HOSTS="4 8" MODES="p2p direct" MBIT=1000 benches/lab-release.sh
#
# Needs root, a release build (cargo build --release), the Debian packages
# (base-images/fetch-debs.sh) and what deploy/lab/lab.sh needs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
strata="${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/strata}"
[ -x "$strata" ] || { echo "build first: cargo build --release" >&2; exit 1; }
hosts_list="${HOSTS:-4 8}"
mbit="${MBIT:-1000}"
work=$(mktemp -d /var/tmp/strata-lab-release-XXXXXX)
labdir="$work/lab"
export STRATA_STORE="$work/store"
lab() { "$here/deploy/lab/lab.sh" "$1" --dir "$labdir" "${@:2}"; }
cleanup() { lab down >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
origin=10.77.0.3:5000
config="$here/deploy/examples/offline.toml"

# The tier stack once, so every release builds only its app tier.
cp -r "$here/base-images/webapp" "$work/war"
echo ok >"$work/war/health.txt"
war() {  # TAG: version.txt and 4 MiB of bytes of its own
    echo "$1" >"$work/war/version.txt"
    head -c $((4 << 20)) /dev/urandom >"$work/war/static.bin"
    [ "$1" = b1 ] || echo "<h1>$1</h1>" >"$work/war/index.html"
}
war b0
"$strata" build -c "$config" --layout "$work/oci" --tier sample --war "sample=$work/war" >/dev/null 2>&1

spec() {  # K
    local i hosts=()
    for i in $(seq 1 "$1"); do hosts+=("\"tcp://10.77.0.$((10 + i)):2376?tls=$labdir/tls/client\""); done
    mkdir -p "$work/apps"
    local IFS=,
    cat >"$work/apps/shop.toml" <<TOML
name = "shop"
instances = $(($1 * 2))
hosts = [${hosts[*]}]
stop_grace = "5s"
memory_mib = 400
env = { JAVA_OPTS = "-Djava.awt.headless=true -Xss512k -XX:TieredStopAtLevel=1" }
[network]
name = "lan"
driver = "macvlan"
parent = "eth0"
subnet = "10.77.0.0/24"
dynamic_range = "10.77.0.160/27"
pool = "10.77.0.100-10.77.0.149"
[health]
kind = "http"
port = 8080
path = "/health.txt"
interval = "250ms"
timeout = "2s"
retries = 480
[hotfix]
paths = ["/var/lib/tomcat10/webapps/**"]
TOML
}

on_lan() { lab exec -- "$@"; }
s() { on_lan "$strata" "$@" --apps "$work/apps" --data "$work/data" --layout "$work/oci"; }
tx() { ip -n lrb-origin -j -s link show eth0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["bytes"])'; }
# Bytes of the layers (and config) of shop:$2 that shop:$1 lacks.
new_bytes() {
    on_lan python3 - "$origin" "$1" "$2" <<'PY'
import json, sys, urllib.request
o, old, new = sys.argv[1:]
def parts(tag):
    if tag == "-":
        return {}
    rq = urllib.request.Request(f"http://{o}/v2/shop/manifests/{tag}",
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    m = json.load(urllib.request.urlopen(rq))
    return {l["digest"]: l["size"] for l in m["layers"] + [m["config"]]}
a, b = parts(old), parts(new)
print(sum(s for d, s in b.items() if d not in a))
PY
}
# Every instance serves TAG to a client on the LAN (bounded wait).
serving() {
    local ips ip
    ips=$(s status shop --json 2>/dev/null | python3 -c 'import json,sys; print(" ".join(i["ip"] for i in json.load(sys.stdin)["instances"]))')
    for ip in $ips; do
        for _ in $(seq 1 600); do
            [ "$(on_lan curl -sf -m 2 "http://$ip:8080/version.txt" 2>/dev/null)" = "$1" ] && continue 2
            sleep 0.1
        done
        echo "$ip does not serve $1" >&2; return 1
    done
}

release() {  # MODE K TAG PREV
    local mode="$1" k="$2" tag="$3" prev="$4" t0 t1 before after new token
    token=$(cat "$labdir/origin/token")
    war "$tag"
    [ "$tag" != b3 ] || sed -i 's/^env = {/env = { RELEASE = "three",/' "$work/apps/shop.toml"
    before=$(tx)
    t0=$(date +%s.%N)
    if [ "$mode" = p2p ]; then
        STRATA_REGISTRY_AUTH="lab:$token" s release shop -c "$config" --war "$work/war" \
            --push "$origin/shop:$tag" --plain-http --server "http://$origin" --token "$token" --load \
            >"$work/out" 2>&1 || { tail -n 30 "$work/out"; return 1; }
    else
        STRATA_REGISTRY_AUTH="lab:$token" on_lan "$strata" build -c "$config" --layout "$work/oci" \
            --tier shop --war "shop=$work/war" >"$work/out" 2>&1 || { tail -n 30 "$work/out"; return 1; }
        # gzip: the lab's engines (Debian's docker.io 20.10) cannot read
        # zstd layers; on the p2p path each agent makes the gzip variant.
        STRATA_REGISTRY_AUTH="lab:$token" on_lan "$strata" push --gzip --plain-http "oci:$work/oci:shop" "$origin/shop:$tag" \
            >>"$work/out" 2>&1 || { tail -n 30 "$work/out"; return 1; }
        local i pids=()
        for i in $(seq 1 "$k"); do lab docker "h$i" pull -q "$origin/shop:$tag" >/dev/null & pids+=($!); done
        for i in "${pids[@]}"; do wait "$i"; done
        s deploy shop --image shop >>"$work/out" 2>&1 || { tail -n 30 "$work/out"; return 1; }
    fi
    serving "$tag"
    t1=$(date +%s.%N)
    after=$(tx)
    new=$(new_bytes "$prev" "$tag")
    python3 -c "
k, mode, tag = $k, '$mode', '$tag'
secs, egress, new = $t1 - $t0, $after - $before, $new
kind = {'b1': 'first deploy', 'b2': 'hotfix', 'b3': 'redeploy'}[tag]
print(f'K={k:<2} {mode:<6} {tag} {kind:<12} {secs:6.1f} s to all {2 * k} serving   origin egress {egress / 1048576:7.1f} MiB = {egress / new:5.2f} copies of the {new / 1048576:.1f} MiB new')
"
}

echo "lab release: $(nproc) cores, LAN ${mbit} Mbit/s, $(date -u +%FT%TZ), load: $(uptime | sed 's/.*load average: //')"
for k in $hosts_list; do
    for mode in ${MODES:-p2p direct}; do
        lab down >/dev/null 2>&1 || true
        rm -rf "$work/data" "$work/apps"
        lab up --hosts "$k" --prefix lrb --mbit "$mbit" --strata "$strata" >/dev/null 2>"$work/lab.err" \
            || { cat "$work/lab.err"; exit 1; }
        spec "$k"
        release "$mode" "$k" b1 -
        release "$mode" "$k" b2 b1
        release "$mode" "$k" b3 b2
    done
done
