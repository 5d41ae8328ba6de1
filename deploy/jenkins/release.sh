#!/usr/bin/env bash
# The same as the Jenkinsfile, from any CI or a terminal:
#   STRATA_TOKEN=… deploy/jenkins/release.sh shop target/shop.war 42
# Exits non-zero when a stage fails; the running version stays in place.
set -euo pipefail
app="${1:?usage: release.sh APP WAR BUILD}"
war="${2:?usage: release.sh APP WAR BUILD}"
build="${3:?usage: release.sh APP WAR BUILD}"
server="${STRATA_SERVER:-http://127.0.0.1:5000}"
registry="${server#http://}"
registry="${registry#https://}"
: "${STRATA_TOKEN:?set STRATA_TOKEN to a push token (strata token create)}"
export STRATA_REGISTRY_AUTH="${STRATA_REGISTRY_AUTH:-jenkins:$STRATA_TOKEN}"
exec strata release "$app" \
    --war "$war" \
    -c "${STRATA_LAYERS:-layers.toml}" \
    --push "$registry/$app:build-$build" \
    --server "$server" --token "$STRATA_TOKEN"
