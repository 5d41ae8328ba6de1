#!/bin/sh
# assemble-rootfs.sh DEBS ROOT — reference assembly of the Tomcat 10 rootfs
# from the debs fetched by fetch-debs.sh (dpkg-deb -x, no maintainer
# scripts), plus everything the maintainer scripts would have done.
# This is the executable form of NOTES.md; the strata builder does the same
# in its tiers. ROOT must not exist or be empty. Needs root (chown).
#
#   STRATA_APPLETS=all|minimal   busybox links (default all)
#   STRATA_MYHOSTNAME=0|1        include libnss-myhostname + nsswitch
#                                "hosts: files myhostname dns" (default 1)
#   STRATA_TRIM=0|1              drop /usr/share/doc, man, lintian (default 1)
#   STRATA_TZ=Etc/UTC            /etc/localtime + /etc/timezone
set -eu

DEBS=${1:?usage: assemble-rootfs.sh DEBS ROOT}
ROOT=${2:?usage: assemble-rootfs.sh DEBS ROOT}
APPLETS=${STRATA_APPLETS:-all}
MYHOSTNAME=${STRATA_MYHOSTNAME:-1}
TRIM=${STRATA_TRIM:-1}
TZNAME=${STRATA_TZ:-Etc/UTC}

die() { echo "assemble-rootfs: error: $*" >&2; exit 1; }

[ -f "$DEBS/generated/cacerts" ] || die "$DEBS/generated/cacerts missing (run make-cacerts.sh)"
mkdir -p "$ROOT"
[ -z "$(ls -A "$ROOT")" ] || die "$ROOT is not empty"

PKGS="busybox-static libc6 libgcc-s1 libstdc++6 zlib1g openjdk-17-jre-headless
libeclipse-jdt-core-java libtomcat10-java tomcat10-common tomcat10
ca-certificates libc-bin tzdata"
[ "$MYHOSTNAME" = 1 ] && PKGS="$PKGS libnss-myhostname"

# --- base: extract -----------------------------------------------------------
for p in $PKGS; do
    set -- "$DEBS/$p"_*.deb
    [ -e "$1" ] || die "missing $p deb"
    dpkg-deb -x "$1" "$ROOT"
done

# --- base: busybox applet links (busybox-static ships only /bin/busybox) ------
if [ "$APPLETS" = all ]; then
    # Every applet at its --list-full path, as a symlink to /bin/busybox;
    # skip paths a package already provides, and the bogus "linuxrc".
    "$ROOT/bin/busybox" --list-full | while IFS= read -r a; do
        case "$a" in */*) ;; *) continue ;; esac
        [ -e "$ROOT/$a" ] || [ -L "$ROOT/$a" ] && continue
        mkdir -p "$ROOT/$(dirname "$a")"
        ln -s /bin/busybox "$ROOT/$a"
    done
else
    # Debian's busybox-static is built with the standalone shell: commands run
    # from /bin/sh (catalina.sh, entrypoints) find applets without any link.
    # Links are only needed for paths exec'd directly (image Cmd/Entrypoint,
    # Runtime.exec from Java, the passwd shell).
    for a in bin/sh usr/sbin/nologin; do
        mkdir -p "$ROOT/$(dirname "$a")"
        ln -s /bin/busybox "$ROOT/$a"
    done
fi

# --- base: users, dirs, nsswitch, locale, timezone -----------------------------
mkdir -p "$ROOT/root" "$ROOT/tmp" "$ROOT/var/tmp" "$ROOT/run" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev"
chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"
chmod 0700 "$ROOT/root"
cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
tomcat:x:999:999:Apache Tomcat:/var/lib/tomcat:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
adm:x:4:
tomcat:x:999:
nogroup:x:65534:
EOF
cat >"$ROOT/etc/shadow" <<'EOF'
root:*:19000:0:99999:7:::
tomcat:!:19000::::::
nobody:*:19000:0:99999:7:::
EOF
chmod 0640 "$ROOT/etc/shadow"
if [ "$MYHOSTNAME" = 1 ]; then
    hosts="files myhostname dns"
else
    hosts="files dns"
fi
cat >"$ROOT/etc/nsswitch.conf" <<EOF
passwd:         files
group:          files
shadow:         files
hosts:          $hosts
networks:       files
protocols:      files
services:       files
ethers:         files
rpc:            files
EOF
[ -e "$ROOT/usr/share/zoneinfo/$TZNAME" ] || die "no zoneinfo for $TZNAME"
ln -sfn "/usr/share/zoneinfo/$TZNAME" "$ROOT/etc/localtime"
echo "$TZNAME" >"$ROOT/etc/timezone"
# C.UTF-8 locale: /usr/lib/locale/C.utf8 comes straight from libc-bin; nothing to do.

# --- tools: CA certificates ---------------------------------------------------
# (PEM bundle for non-Java tools; busybox wget/ssl_client do not use it)
mkdir -p "$ROOT/etc/ssl/certs/java"
if [ -f "$DEBS/generated/ca-certificates.crt" ]; then
    cp "$DEBS/generated/ca-certificates.crt" "$ROOT/etc/ssl/certs/ca-certificates.crt"
else
    (export LC_ALL=C; cat "$ROOT"/usr/share/ca-certificates/mozilla/*.crt) >"$ROOT/etc/ssl/certs/ca-certificates.crt"
fi
cp "$DEBS/generated/cacerts" "$ROOT/etc/ssl/certs/java/cacerts"
chmod 0644 "$ROOT/etc/ssl/certs/java/cacerts"

# --- jdk: alternatives ---------------------------------------------------------
JH=/usr/lib/jvm/java-17-openjdk-amd64
[ -x "$ROOT$JH/bin/java" ] || die "no $JH/bin/java"
mkdir -p "$ROOT/etc/alternatives"
for t in java keytool rmiregistry; do
    ln -sfn "$JH/bin/$t" "$ROOT/etc/alternatives/$t"
    ln -sfn "/etc/alternatives/$t" "$ROOT/usr/bin/$t"
done
ln -sfn java-1.17.0-openjdk-amd64 "$ROOT/usr/lib/jvm/default-java"

# --- tomcat: what tomcat10's postinst does --------------------------------------
for f in tomcat-users.xml web.xml server.xml logging.properties context.xml catalina.properties jaspic-providers.xml; do
    cp "$ROOT/usr/share/tomcat10/etc/$f" "$ROOT/etc/tomcat10/$f"
    chown 0:999 "$ROOT/etc/tomcat10/$f"
    chmod 0640 "$ROOT/etc/tomcat10/$f"
done
cp "$ROOT/usr/share/tomcat10/default.template" "$ROOT/etc/default/tomcat10"
chown 0:999 "$ROOT/etc/tomcat10/policy.d" "$ROOT"/etc/tomcat10/policy.d/*.policy
chmod 0640 "$ROOT"/etc/tomcat10/policy.d/*.policy
chown -Rh 999:999 "$ROOT/var/lib/tomcat10/lib"
chown -Rh 0:999 "$ROOT/etc/tomcat10/Catalina"
chmod 0775 "$ROOT/etc/tomcat10/Catalina"
[ -d "$ROOT/var/lib/tomcat10/webapps/ROOT" ] || cp -r "$ROOT/usr/share/tomcat10-root/default_root" "$ROOT/var/lib/tomcat10/webapps/ROOT"
chown -Rh 999:999 "$ROOT/var/lib/tomcat10/webapps"
chmod 0775 "$ROOT/var/lib/tomcat10/webapps"
chown -Rh 999:4 "$ROOT/var/log/tomcat10"
chmod 2770 "$ROOT/var/log/tomcat10"
chown -Rh 999:999 "$ROOT/var/cache/tomcat10"
chmod 0750 "$ROOT/var/cache/tomcat10"

# --- trim ----------------------------------------------------------------------
if [ "$TRIM" = 1 ]; then
    rm -rf "$ROOT/usr/share/doc" "$ROOT/usr/share/man" "$ROOT/usr/share/lintian" \
        "$ROOT/usr/share/info" "$ROOT/etc/cron.daily" "$ROOT/etc/rsyslog.d" \
        "$ROOT/etc/logrotate.d" "$ROOT/lib/systemd" "$ROOT/usr/share/initramfs-tools"
fi
echo "assemble-rootfs: $ROOT $(du -sm "$ROOT" | cut -f1) MB" >&2
