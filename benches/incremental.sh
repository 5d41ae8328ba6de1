#!/usr/bin/env bash
# Incremental rebuild after changing only a ~20 MB WAR, end to end
# (`strata build` of the whole offline stack with every other tier cached,
# OCI layout written), with hyperfine. Each run gets a WAR with new content.
#
#   benches/incremental.sh
#
# Needs: base-images/fetch-debs.sh done, hyperfine, python3, a release build.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
strata="${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/strata}"
[ -x "$strata" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d /var/tmp/strata-incr-XXXXXX)
trap 'rm -rf "$work"' EXIT
cat > "$work/make_war.py" <<'PY'
# A WAR of ~20 MB: 40 jars' worth of pseudo-random, half-compressible bytes,
# plus pages; the seed changes one page and one jar per run.
import random, sys, time, zipfile
seed = int(sys.argv[2]) if len(sys.argv) > 2 else time.time_ns()
rnd = random.Random(42)
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_STORED) as z:
    z.writestr("WEB-INF/web.xml", "<web-app/>")
    z.writestr("index.html", f"<h1>build {seed}</h1>")
    for i in range(40):
        body = bytes(rnd.getrandbits(7) for _ in range(256 * 1024)) * 2
        if i == 0:
            body += str(seed).encode()
        z.writestr(f"WEB-INF/lib/lib{i}.jar", body)
PY
python3 "$work/make_war.py" "$work/app.war" 0
export STRATA_STORE="$work/store"
cfg="$here/deploy/examples/offline.toml"
"$strata" build -c "$cfg" --war "bench=$work/app.war" --layout "$work/oci" >/dev/null 2>&1
echo "WAR: $(du -b "$work/app.war" | cut -f1) bytes; $(nproc) cores"
hyperfine --runs "${RUNS:-10}" --export-json "$work/r.json" \
  --prepare "python3 $work/make_war.py $work/app.war" \
  -n 'strata build (new WAR)' \
  "$strata build -c $cfg --war bench=$work/app.war --layout $work/oci"
"$strata" build -c "$cfg" --war "bench=$work/app.war" --layout "$work/oci" --json \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); print("tiers rebuilt:", [t["tier"] for t in r["tiers"] if not t["cached"]], "of", len(r["tiers"]))'
python3 "$work/make_war.py" "$work/app.war"
"$strata" build -c "$cfg" --war "bench=$work/app.war" --layout "$work/oci" --json \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); b=[t for t in r["tiers"] if not t["cached"]]; print("after a WAR change, rebuilt:", [(t["tier"], t["layer"]["size"]) for t in b], "of", len(r["tiers"]), "tiers")'
