#!/bin/sh
# probe.sh [DEBS] — end-to-end check of the offline Tomcat rootfs in Docker.
# Assembles the rootfs (assemble-rootfs.sh), `docker import`s it as
# strata-probe:rootfs, then checks: Tomcat serves / and a JSP, Java is PID 1,
# `docker stop` time, getLocalHost()/file.encoding in several network setups
# with and without nss-myhostname. Removes its containers and image at exit.
# Needs root and a local Docker engine; no network access.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
DEBS=${1:-"$here/debs"}
IMG=strata-probe:rootfs
JH=/usr/lib/jvm/java-17-openjdk-amd64
work=$(mktemp -d "${TMPDIR:-/tmp}/strata-probe.XXXXXX")
containers=""
cleanup() {
    for c in $containers; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    docker rmi -f "$IMG" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
now() { date +%s.%N; }
since() { echo "$1 $(now)" | awk '{printf "%.2f", $2 - $1}'; }

"$here/assemble-rootfs.sh" "$DEBS" "$work/root"
cat >"$work/root/var/lib/tomcat10/webapps/ROOT/probe.jsp" <<'EOF'
<%@ page contentType="text/plain; charset=UTF-8" %><%
String host;
try { host = java.net.InetAddress.getLocalHost().toString(); }
catch (Exception e) { host = "EXCEPTION " + e; }
%>localhost=<%= host %>
file.encoding=<%= System.getProperty("file.encoding") %>
sun.jnu.encoding=<%= System.getProperty("sun.jnu.encoding") %>
user.name=<%= System.getProperty("user.name") %>
EOF
chown 999:999 "$work/root/var/lib/tomcat10/webapps/ROOT/probe.jsp"
mkdir -p "$work/probe"
cat >"$work/probe/Probe.java" <<'EOF'
public class Probe {
  public static void main(String[] a) {
    String h;
    try { h = java.net.InetAddress.getLocalHost().toString(); }
    catch (Exception e) { h = "EXCEPTION " + e; }
    System.out.println("getLocalHost=" + h + " file.encoding=" + System.getProperty("file.encoding"));
  }
}
EOF
sed 's/files myhostname dns/files dns/' "$work/root/etc/nsswitch.conf" >"$work/probe/nsswitch-nomyh"
printf '127.0.0.1\tlocalhost\n' >"$work/probe/hosts-nohost"

tar -C "$work/root" --numeric-owner -cf "$work/rootfs.tar" .
echo "rootfs: $(du -sm "$work/root" | cut -f1) MB on disk, tar $(($(stat -c %s "$work/rootfs.tar") / 1048576)) MiB"
docker import "$work/rootfs.tar" "$IMG" >/dev/null

ENV="-e PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
 -e CATALINA_HOME=/usr/share/tomcat10 -e CATALINA_BASE=/var/lib/tomcat10 -e CATALINA_TMPDIR=/tmp
 -e JAVA_HOME=$JH -e LANG=C.UTF-8 -e LC_ALL=C.UTF-8
 -e JAVA_OPTS=-Djava.awt.headless=true"

echo "== Tomcat, exec form, user 999, Java as PID 1"
c=strata-probe-tomcat; containers="$containers $c"
t0=$(now)
# shellcheck disable=SC2086
docker run -d --name $c -u 999:999 -w /var/lib/tomcat10 $ENV "$IMG" \
    /usr/share/tomcat10/bin/catalina.sh run >/dev/null
ip=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' $c)
i=0
until curl -sf -o /dev/null "http://$ip:8080/"; do
    i=$((i + 1)); [ $i -lt 600 ] || { docker logs $c; echo "FAIL: no answer"; exit 1; }
    sleep 0.05
done
echo "first 200 on / after $(since "$t0") s"
t1=$(now); curl -sf "http://$ip:8080/probe.jsp"; echo "(first JSP request $(since "$t1") s)"
docker exec $c ps -o pid,user,args | cut -c1-80 | head -3
t2=$(now); docker stop $c >/dev/null
echo "docker stop: $(since "$t2") s, exit code $(docker inspect -f '{{.State.ExitCode}}' $c)"
docker rm $c >/dev/null

echo "== getLocalHost() matrix (user 999)"
for nss in myhostname files-dns; do
    for net in bridge none host hosts-bind; do
        case $net in
            bridge) nargs="" ;;
            none) nargs="--network none" ;;
            host) nargs="--network host" ;;
            hosts-bind) nargs="-v $work/probe/hosts-nohost:/etc/hosts:ro" ;;
        esac
        extra=""
        [ $nss = files-dns ] && extra="-v $work/probe/nsswitch-nomyh:/etc/nsswitch.conf:ro"
        c=strata-probe-m; containers="$containers $c"
        # shellcheck disable=SC2086
        r=$(docker run --rm --name $c -u 999:999 $ENV $nargs $extra -v "$work/probe:/probe:ro" \
            "$IMG" $JH/bin/java /probe/Probe.java 2>&1 | tail -1)
        printf '%-11s %-10s %s\n' "$nss" "$net" "$r"
    done
done
echo "== encoding (bridge)"
c=strata-probe-e; containers="$containers $c"
printf 'no LANG:      '; docker run --rm --name $c -v "$work/probe:/probe:ro" "$IMG" $JH/bin/java /probe/Probe.java 2>&1 | tail -1
printf 'LANG=C.UTF-8: '; docker run --rm --name $c -e LANG=C.UTF-8 -v "$work/probe:/probe:ro" "$IMG" $JH/bin/java /probe/Probe.java 2>&1 | tail -1
echo "probe: done"
