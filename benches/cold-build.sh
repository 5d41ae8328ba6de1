#!/usr/bin/env bash
# Cold build of one JDK directory into a zstd layer: strata vs
#   tar --sort=name … | zstd -T0 -3
# side by side on the same tree, in one run, with hyperfine.
#
#   benches/cold-build.sh [JDK_DIR]
#
# JDK_DIR defaults to the largest JDK under /usr/lib/jvm. The tree is copied
# (symlinks resolved) into a scratch directory so both tools read the same
# files from the page cache. Needs: hyperfine, zstd, GNU tar, a release build
# (cargo build --release).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
strata="${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/strata}"
[ -x "$strata" ] || { echo "build first: cargo build --release" >&2; exit 1; }
jdk="${1:-$( (du -sL /usr/lib/jvm/*/ 2>/dev/null || true) | sort -n | tail -1 | cut -f2)}"
work=$(mktemp -d /var/tmp/strata-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -rL "$jdk" "$work/jdk"
size=$(du -sb "$work/jdk" | cut -f1)
cat > "$work/layers.toml" <<TOML
[tiers.jdk]
sources = [{ path = "jdk", dest = "/opt/java" }]
TOML
tar -C "$work" -cf /dev/null jdk   # warm the page cache
echo "tree: $jdk, $((size / 1000000)) MB, $(find "$work/jdk" | wc -l) entries; $(nproc) cores"
hyperfine --warmup 1 --runs "${RUNS:-7}" --export-json "$work/result.json" \
  -n 'tar | zstd -T0 -3' \
  "tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C $work -cf - jdk | zstd -T0 -3 -q -f -o $work/pipeline.tar.zst" \
  -n 'strata build' \
  "$strata build -c $work/layers.toml --no-cache --layout $work/oci --store $work/store"
python3 - "$work/result.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
p, s = r["tar | zstd -T0 -3"], r["strata build"]
print(f"pipeline {p['mean']:.3f}s ± {p['stddev']:.3f}, strata {s['mean']:.3f}s ± {s['stddev']:.3f}, "
      f"ratio strata/pipeline = {s['mean'] / p['mean']:.2f}")
PY
ls -l "$work/pipeline.tar.zst" "$work"/store/blobs/sha256 | sort -k5 -n | tail -2
