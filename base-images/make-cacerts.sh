#!/bin/sh
# make-cacerts.sh [DEST] — build DEST/generated/cacerts, a Java truststore
# (PKCS12, opens with password "changeit") holding the Mozilla CA certificates
# of DEST/ca-certificates_*.deb (/usr/share/ca-certificates/mozilla/*.crt).
# It goes to /etc/ssl/certs/java/cacerts in the image (the JRE's
# lib/security/cacerts symlink points there).
#
# Idempotent: does nothing when DEST/generated/cacerts exists (delete it, or
# set STRATA_CACERTS_FORCE=1, to rebuild).
#
# Java used: $STRATA_JAVA if set, else the JRE extracted from
# DEST/openjdk-17-jre-headless_*.deb (it runs on a Debian/glibc host; its
# absolute /etc/java-17-openjdk symlinks are repointed into the temp copy, so
# no host Java is needed).
# Fast path: one JVM runs MakeCacerts.java (source launcher, ~1 s, output is
# deterministic: no MAC, no cert encryption). Fallback when the JVM lacks the
# jdk.compiler module: keytool -importcert once per certificate, in parallel
# shards, merged with -importkeystore (112 s on 2 cores; not deterministic).
#   STRATA_CACERTS_KEYTOOL=1  force the keytool fallback
#   STRATA_CACERTS_MAC=1  fast path writes a password-MAC'd store instead
#                         (random salts: bytes differ per run)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
DEST=${1:-"$here/debs"}
PASS=changeit

die() { echo "make-cacerts: error: $*" >&2; exit 1; }
log() { echo "make-cacerts: $*" >&2; }

[ -d "$DEST" ] || die "no such directory: $DEST (run fetch-debs.sh first)"
DEST=$(cd "$DEST" && pwd)
OUT="$DEST/generated/cacerts"

if [ -e "$OUT" ] && [ "${STRATA_CACERTS_FORCE:-0}" != 1 ]; then
    log "have $OUT"
    exit 0
fi

one_deb() { # one_deb NAME -> path of the single DEST/NAME_*.deb
    found=""
    for f in "$DEST/$1"_*.deb; do
        [ -e "$f" ] || continue
        [ -z "$found" ] || die "more than one $1_*.deb in $DEST"
        found=$f
    done
    [ -n "$found" ] || die "missing $DEST/$1_*.deb (run fetch-debs.sh)"
    echo "$found"
}

start=$(date +%s.%N)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/strata-cacerts.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

dpkg-deb -x "$(one_deb ca-certificates)" "$tmp/ca" || die "cannot extract ca-certificates deb"
certdir="$tmp/ca/usr/share/ca-certificates/mozilla"
set -- "$certdir"/*.crt
[ -e "$1" ] || die "no *.crt in ca-certificates deb under /usr/share/ca-certificates/mozilla"
ncerts=$#

if [ -n "${STRATA_JAVA:-}" ]; then
    JAVA=$STRATA_JAVA
    KEYTOOL=$(dirname "$JAVA")/keytool
else
    dpkg-deb -x "$(one_deb openjdk-17-jre-headless)" "$tmp/jre" || die "cannot extract openjdk-17-jre-headless deb"
    jh=""
    for d in "$tmp"/jre/usr/lib/jvm/*; do
        if [ -d "$d" ] && [ ! -L "$d" ] && [ -x "$d/bin/java" ]; then jh=$d; break; fi
    done
    [ -n "$jh" ] || die "no bin/java in extracted JRE under /usr/lib/jvm"
    # Repoint absolute /etc/... symlinks (lib/jvm.cfg, conf/security/...) into
    # the extracted tree, so the host's /etc is not consulted.
    find "$jh" -type l | while IFS= read -r l; do
        t=$(readlink "$l")
        case "$t" in
            /etc/*) [ -e "$tmp/jre$t" ] && ln -sfn "$tmp/jre$t" "$l" ;;
        esac
    done
    JAVA="$jh/bin/java"
    KEYTOOL="$jh/bin/keytool"
fi
"$JAVA" -version >/dev/null 2>&1 || die "java does not run: $JAVA"

mkdir -p "$DEST/generated"
rm -f "$OUT.tmp"

if [ "${STRATA_CACERTS_KEYTOOL:-0}" != 1 ] && "$JAVA" --list-modules 2>/dev/null | grep -q "^jdk\.compiler@"; then
    mac=""
    [ "${STRATA_CACERTS_MAC:-0}" = 1 ] && mac="--mac"
    # shellcheck disable=SC2086
    "$JAVA" -Xshare:auto "$here/MakeCacerts.java" "$OUT.tmp" "$PASS" $mac "$@" \
        || die "MakeCacerts.java failed"
else
    log "using keytool per certificate (no jdk.compiler in $JAVA, or STRATA_CACERTS_KEYTOOL=1); slow (~2 min)"
    [ -x "$KEYTOOL" ] || die "no keytool next to $JAVA"
    shards=$(nproc 2>/dev/null || echo 2)
    i=0
    for f in "$@"; do
        echo "$f" >>"$tmp/list.$((i % shards))"
        i=$((i + 1))
    done
    pids=""
    s=0
    while [ "$s" -lt "$shards" ]; do
        if [ -f "$tmp/list.$s" ]; then
            (
                while IFS= read -r f; do
                    a=$(basename "$f" .crt | tr 'A-Z' 'a-z')
                    "$KEYTOOL" -importcert -noprompt -storetype PKCS12 \
                        -keystore "$tmp/shard.$s" -storepass "$PASS" \
                        -alias "debian:$a.pem" -file "$f" >/dev/null 2>&1 \
                        || { echo "make-cacerts: error: keytool failed on $f" >&2; exit 1; }
                done <"$tmp/list.$s"
            ) &
            pids="$pids $!"
        fi
        s=$((s + 1))
    done
    for p in $pids; do wait "$p" || die "a keytool shard failed"; done
    for sh in "$tmp"/shard.*; do
        "$KEYTOOL" -importkeystore -noprompt -srcstoretype PKCS12 -srckeystore "$sh" \
            -srcstorepass "$PASS" -deststoretype PKCS12 -destkeystore "$OUT.tmp" \
            -deststorepass "$PASS" >/dev/null 2>&1 || die "keytool -importkeystore failed"
    done
fi

got=$("$KEYTOOL" -list -storetype PKCS12 -keystore "$OUT.tmp" -storepass "$PASS" 2>/dev/null \
    | grep -c trustedCertEntry || true)
[ "$got" -eq "$ncerts" ] || die "truststore has $got entries, expected $ncerts"
mv "$OUT.tmp" "$OUT"
end=$(date +%s.%N)
log "wrote $OUT ($ncerts certificates) in $(echo "$start $end" | awk '{printf "%.1f", $2 - $1}') s"
