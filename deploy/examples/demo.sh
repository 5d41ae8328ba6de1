#!/usr/bin/env bash
# The main job, end to end on one Debian machine: fetch the Debian packages,
# build the tier stack (alpine → tools → jdk → tomcat → sample) with strata,
# deploy the sample app on the local Docker engine with a leased IP, fetch
# its pages, then release a changed WAR as an in-place hotfix.
#
#   deploy/examples/demo.sh            # as root, or a user in the docker group
#
# Leaves the app running (container sample-1-gN on network strata-sample,
# 10.91.0.0/24); state and history in ./strata-data.
set -euo pipefail
cd "$(dirname "$0")/../.."
log() { printf '\n==> %s\n' "$*" >&2; }

if ! command -v docker >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        log "installing docker.io and curl"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io curl </dev/null
    else
        echo "demo: needs docker and curl (apt-get install docker.io curl)" >&2
        exit 1
    fi
fi
docker info >/dev/null 2>&1 || { echo "demo: the Docker engine is not running (systemctl start docker)" >&2; exit 1; }

log "fetching Debian packages into base-images/debs"
sh base-images/fetch-debs.sh

log "building strata"
cargo build --release --locked
strata="${CARGO_TARGET_DIR:-target}/release/strata"

log "building the tier stack"
"$strata" build -c deploy/examples/offline.toml --layout out/oci

log "deploying app sample (deploy/apps/sample.toml) on this machine's engine"
"$strata" deploy sample --image sample --layout out/oci --data strata-data
ip=$("$strata" status sample --data strata-data --json | sed -n 's/.*"ip": "\([0-9.]*\)".*/\1/p' | head -n 1)
# Waits (at most 15 s) until PATH on the instance contains TEXT: Tomcat
# serves a changed static file from its cache for up to 5 s.
serves() {
    for _ in $(seq 1 60); do
        if curl -sf "http://$ip:8080$1" 2>/dev/null | grep -q "$2"; then
            curl -sf "http://$ip:8080$1"
            return 0
        fi
        sleep 0.25
    done
    echo "demo: http://$ip:8080$1 does not show \"$2\"" >&2
    "$strata" logs sample --data strata-data --tail 20
    return 1
}
serves / "Hello from strata"
echo
curl -sf "http://$ip:8080/info.jsp"

log "a new WAR with one changed page: released as an in-place hotfix (no restart)"
rm -rf out/demo-war && cp -r base-images/webapp out/demo-war
sed -i 's/Hello from strata/Hello again from strata (hotfixed)/' out/demo-war/index.html
"$strata" release sample --war out/demo-war -c deploy/examples/offline.toml --layout out/oci --data strata-data
serves / "Hello again from strata (hotfixed)"
"$strata" history sample --data strata-data
log "done: Tomcat answers on http://$ip:8080/"
echo "  strata status sample --data strata-data     # instances, IP, image, hotfix, health"
echo "  strata rollback sample --data strata-data   # back to the first version"
echo "  strata logs sample --data strata-data -f    # Tomcat's log"
