#!/usr/bin/env bash
# The main job, end to end on one Debian machine: fetch the Debian packages,
# build the tier stack (alpine → tools → jdk → tomcat → sample) with strata,
# load it into the local Docker engine, run Tomcat and fetch its pages.
#
#   deploy/examples/demo.sh            # as root, or a user in the docker group
#
# Leaves one container, strata-demo, serving on 127.0.0.1:${PORT:-8080}.
# Stop it with: docker rm -f strata-demo
set -euo pipefail
cd "$(dirname "$0")/../.."
port="${PORT:-8080}"
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

log "building the tier stack and loading it into Docker"
"$strata" build -c deploy/examples/offline.toml --layout out/oci --load

log "running strata/sample on 127.0.0.1:$port"
docker rm -f strata-demo >/dev/null 2>&1 || true
docker run -d --name strata-demo -p "127.0.0.1:$port:8080" strata/sample:latest >/dev/null
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/" >/dev/null && break
    sleep 0.5
done
curl -sf "http://127.0.0.1:$port/" || { docker logs strata-demo | tail -20; exit 1; }
echo
curl -sf "http://127.0.0.1:$port/info.jsp"
log "done: Tomcat answers on http://127.0.0.1:$port/ (docker rm -f strata-demo to stop)"
"$strata" inspect --layout out/oci sample | head -12
