#!/usr/bin/env bash
# A whole image through skopeo and through strata's own client, side by
# side: push (from an OCI layout) and pull (into a fresh OCI layout / store)
# against Debian's docker-registry 2.8 and strata serve on loopback. The
# client dominates; every pair is reported.
#
#   benches/registry-skopeo.sh [LAYOUT:NAME]    # default: the offline stack's tomcat tier
#
# Needs: skopeo, docker-registry, hyperfine, a release build, and (for the
# default image) a built offline stack in out/oci.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
strata="${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/strata}"
[ -x "$strata" ] || { echo "build first: cargo build --release" >&2; exit 1; }
src="${1:-oci:$here/out/oci:tomcat}"
work=$(mktemp -d /var/tmp/strata-skopeo-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/registry.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $work/dr-data }, delete: { enabled: true } }
http: { addr: 127.0.0.1:5795 }
YML
docker-registry serve "$work/registry.yml" >"$work/dr.log" 2>&1 & pids+=($!)
"$strata" serve --open-push --allow-delete --listen 127.0.0.1:5796 --data "$work/st" >"$work/st.log" 2>&1 & pids+=($!)
for port in 5795 5796; do
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
done
echo "image: $src ($(skopeo inspect --raw "$src" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(len(m["layers"]), "layers,", sum(l["size"] for l in m["layers"]) // 1000000, "MB")'))"
# Each push goes to a new repository, and skopeo's blob-info cache is
# removed first, so it uploads every blob instead of mounting it.
nocache="rm -f /var/lib/containers/cache/blob-info-cache-v1.* $HOME/.local/share/containers/cache/blob-info-cache-v1.*"
hyperfine --runs "${RUNS:-5}" --prepare "$nocache" \
  -n 'push docker-registry' "skopeo copy -q --dest-tls-verify=false $src docker://127.0.0.1:5795/b/\$(date +%s%N):1" \
  -n 'push strata serve' "skopeo copy -q --dest-tls-verify=false $src docker://127.0.0.1:5796/b/\$(date +%s%N):1"
skopeo copy -q --dest-tls-verify=false "$src" docker://127.0.0.1:5795/pull/img:1
skopeo copy -q --dest-tls-verify=false "$src" docker://127.0.0.1:5796/pull/img:1
hyperfine --runs "${RUNS:-5}" --prepare "rm -rf $work/out" \
  -n 'pull docker-registry' "skopeo copy -q --src-tls-verify=false docker://127.0.0.1:5795/pull/img:1 oci:$work/out:x" \
  -n 'pull strata serve' "skopeo copy -q --src-tls-verify=false docker://127.0.0.1:5796/pull/img:1 oci:$work/out:x"

# strata push / pull: the image is imported into a store once; each push
# forgets which repositories it pushed to (so it uploads instead of
# mounting) and goes to a new repository; each pull starts from an empty store.
export STRATA_STORE="$work/store"
"$strata" inspect "$src" >/dev/null
hyperfine --runs "${RUNS:-5}" --prepare "rm -rf $work/store/meta/pushed" \
  -n 'strata push docker-registry' "$strata push $src 127.0.0.1:5795/s/\$(date +%s%N):1" \
  -n 'strata push strata serve' "$strata push $src 127.0.0.1:5796/s/\$(date +%s%N):1"
hyperfine --runs "${RUNS:-5}" --prepare "rm -rf $work/pstore $work/pout" \
  -n 'strata pull docker-registry' "STRATA_STORE=$work/pstore $strata pull --layout $work/pout 127.0.0.1:5795/pull/img:1" \
  -n 'strata pull strata serve' "STRATA_STORE=$work/pstore $strata pull --layout $work/pout 127.0.0.1:5796/pull/img:1"
