#!/usr/bin/env bash
# Builds the image the compose cluster runs, with strata itself: the offline
# stack's tools tier (busybox, glibc, tzdata, CA certificates, the fixes)
# plus liblzma and the strata binary, loaded into the local engine.
#
#   deploy/compose/build-image.sh [IMAGE]     # default strata/node:dev
#
# Environment: STRATA_BIN (default: target/release/strata, built if
# missing), STRATA_STORE (the build cache). Needs the Debian packages
# (base-images/fetch-debs.sh) and the Docker engine.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
image="${1:-strata/node:dev}"
bin="${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/strata}"
if [ ! -x "$bin" ]; then
    (cd "$here" && cargo build --release --locked)
fi
[ -e "$here/base-images/debs" ] || bash "$here/base-images/fetch-debs.sh"
work=$(mktemp -d "${TMPDIR:-/tmp}/strata-node-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Debug symbols stay out of the image.
cp "$bin" "$work/strata"
strip "$work/strata" 2>/dev/null || true
"$bin" build -c "$here/deploy/examples/offline.toml" --tier tools --layout "$work/oci" >&2
repo="${image%:*}"
cat > "$work/node.toml" <<TOML
[build]
repository = "$(dirname "$repo")"
tag = "${image##*:}"
compression = "gzip"   # Docker 20.10 cannot read zstd layers

[tiers.$(basename "$repo")]
description = "strata server and agent"
base = "oci:$work/oci:tools"
sources = [
  { deb = "$here/base-images/debs/liblzma5_*.deb", exclude = ["usr/share/**"] },
  { path = "$work/strata", dest = "/usr/local/bin/strata", mode = "0755" },
  { dir = ["/data", "/certs"] },
]
entrypoint = ["/usr/local/bin/strata"]
cmd = ["--help"]
TOML
"$bin" build -c "$work/node.toml" --layout "$work/node-oci" --load >&2
echo "$image"
