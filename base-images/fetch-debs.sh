#!/bin/sh
# fetch-debs.sh [DEST] — download the Debian bookworm packages the strata base
# tiers are assembled from (extracted with dpkg-deb -x, no maintainer scripts).
#
# Idempotent: a package whose <name>_*.deb is already in DEST is skipped.
# Downloads happen in a temporary directory and are moved into DEST only when
# `apt-get download` succeeded, so DEST never holds partial files.
#
# Environment:
#   STRATA_APT_UPDATE=1   run `apt-get update` first (default: only when apt
#                         does not know one of the packages)
#   STRATA_NO_CACERTS=1   do not build DEST/generated/cacerts afterwards
#   STRATA_ALLOW_NON_BOOKWORM=1  allow a host that is not bookworm
# Writes DEST/packages.lock: "package version sha256 file", sorted.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
DEST=${1:-"$here/debs"}

# Exactly these packages (architecture: the host's, amd64 here).
PACKAGES="
busybox-static
libc6
libgcc-s1
libstdc++6
zlib1g
openjdk-17-jre-headless
libeclipse-jdt-core-java
libtomcat10-java
tomcat10-common
tomcat10
ca-certificates
libc-bin
tzdata
libnss-myhostname
liblzma5
"

die() { echo "fetch-debs: error: $*" >&2; exit 1; }
log() { echo "fetch-debs: $*" >&2; }

command -v apt-get >/dev/null 2>&1 || die "apt-get not found (needs a Debian bookworm host)"
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found"
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
if [ "$codename" != bookworm ] && [ "${STRATA_ALLOW_NON_BOOKWORM:-0}" != 1 ]; then
    die "host is '${codename:-unknown}', not Debian bookworm: apt would fetch other versions (set STRATA_ALLOW_NON_BOOKWORM=1 to force)"
fi
[ "$(dpkg --print-architecture)" = amd64 ] || die "host architecture is not amd64"

mkdir -p "$DEST" || die "cannot create $DEST"
DEST=$(cd "$DEST" && pwd)

present() { # present NAME -> true if DEST has NAME_*.deb
    for f in "$DEST/$1"_*.deb; do
        [ -e "$f" ] && return 0
    done
    return 1
}

missing=""
for p in $PACKAGES; do
    if present "$p"; then
        log "have $p"
    else
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    need_update=${STRATA_APT_UPDATE:-0}
    if [ "$need_update" != 1 ]; then
        for p in $missing; do
            if ! apt-cache show "$p" >/dev/null 2>&1; then
                need_update=1
                break
            fi
        done
    fi
    if [ "$need_update" = 1 ]; then
        log "running apt-get update"
        apt-get -q update >&2 || die "apt-get update failed"
    fi

    tmp=$(mktemp -d "${TMPDIR:-/tmp}/strata-debs.XXXXXX") || die "mktemp failed"
    trap 'rm -rf "$tmp"' EXIT
    trap 'exit 130' INT TERM
    # _apt cannot write into a root-only mktemp dir; apt then warns
    # "Download is performed unsandboxed as root". Let it write.
    chmod 0755 "$tmp"
    chown _apt "$tmp" 2>/dev/null || true

    log "downloading:$missing"
    # shellcheck disable=SC2086
    (cd "$tmp" && apt-get -q -y download $missing) >&2 \
        || die "apt-get download failed for:$missing (try STRATA_APT_UPDATE=1, or check network/sources.list)"

    for p in $missing; do
        found=""
        for f in "$tmp/$p"_*.deb; do
            [ -e "$f" ] || continue
            dpkg-deb --info "$f" >/dev/null 2>&1 || die "downloaded file is not a valid .deb: $f"
            mv "$f" "$DEST/" || die "cannot move $f to $DEST"
            found=1
        done
        [ -n "$found" ] || die "apt-get download produced no file for $p"
    done
fi

# One file per package: two versions of the same package would be ambiguous.
for p in $PACKAGES; do
    n=0
    for f in "$DEST/$p"_*.deb; do
        [ -e "$f" ] && n=$((n + 1))
    done
    [ "$n" -eq 1 ] || die "expected exactly one ${p}_*.deb in $DEST, found $n (remove the stale ones)"
done

# Record versions (package version sha256 filename), sorted, for the builder.
(
    cd "$DEST"
    for p in $PACKAGES; do
        for f in "$p"_*.deb; do
            v=$(dpkg-deb -f "$f" Version)
            s=$(sha256sum "$f" | cut -d' ' -f1)
            echo "$p $v $s $f"
        done
    done | sort
) >"$DEST/packages.lock.tmp" && mv "$DEST/packages.lock.tmp" "$DEST/packages.lock"
log "all packages present in $DEST (list: $DEST/packages.lock)"

if [ "${STRATA_NO_CACERTS:-0}" != 1 ]; then
    "$here/make-cacerts.sh" "$DEST"
fi

# /etc/ssl/certs/ca-certificates.crt, the PEM bundle update-ca-certificates
# would have written: every Mozilla certificate of the package, in name order.
bundle="$DEST/generated/ca-certificates.crt"
if [ ! -e "$bundle" ]; then
    ca_tmp=$(mktemp -d "${TMPDIR:-/tmp}/strata-ca.XXXXXX") || die "mktemp failed"
    dpkg-deb -x "$(ls "$DEST"/ca-certificates_*.deb)" "$ca_tmp" || die "cannot extract ca-certificates"
    mkdir -p "$DEST/generated"
    # shellcheck disable=SC2046
    LC_ALL=C cat $(LC_ALL=C ls "$ca_tmp"/usr/share/ca-certificates/mozilla/*.crt) >"$bundle.tmp" \
        || die "cannot write $bundle"
    mv "$bundle.tmp" "$bundle"
    rm -rf "$ca_tmp"
    log "wrote $bundle"
fi
