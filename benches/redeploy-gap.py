#!/usr/bin/env python3
"""The redeploy gap as clients see it.

Two clients hit http://IP:PORT/PATH until the file STOP exists:
  - "new": a new TCP connection per request, one request started every
    10 ms (each in its own thread, connect timeout 3 s, as a browser or a
    service client without pooling would do);
  - "keep": one keep-alive connection, a request every 10 ms, reconnecting
    after an error.
Prints one JSON object: per client the requests made, the failed ones
(refused, reset, timed out or not 200) and the longest time without a
200 answer (between consecutive successful answers, by completion time),
plus the slowest successful request of the "new" client (a SYN lost while
the IP moves costs the client a 1 s retransmit).

    redeploy-gap.py IP PORT PATH STOP
"""
import http.client
import json
import os
import socket
import sys
import threading
import time

ip, port, path, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
lock = threading.Lock()
new_results = []  # (start, end, ok)
keep_results = []


def one_request():
    t0 = time.monotonic()
    ok = False
    try:
        s = socket.create_connection((ip, port), timeout=3)
        s.settimeout(3)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
        head = s.recv(16)
        ok = head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200")
        s.close()
    except OSError:
        pass
    with lock:
        new_results.append((t0, time.monotonic(), ok))


def new_client():
    threads = []
    nxt = time.monotonic()
    while not os.path.exists(stop):
        t = threading.Thread(target=one_request, daemon=True)
        t.start()
        threads.append(t)
        nxt += 0.010
        time.sleep(max(0.0, nxt - time.monotonic()))
    for t in threads:
        t.join(timeout=5)


def keep_client():
    conn = None
    nxt = time.monotonic()
    while not os.path.exists(stop):
        t0 = time.monotonic()
        ok = False
        try:
            if conn is None:
                conn = http.client.HTTPConnection(ip, port, timeout=3)
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            ok = r.status == 200
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            conn = None
        keep_results.append((t0, time.monotonic(), ok))
        nxt += 0.010
        time.sleep(max(0.0, nxt - time.monotonic()))


def summary(results):
    results = sorted(results, key=lambda r: r[1])
    done = [r[1] for r in results if r[2]]
    longest = 0.0
    for a, b in zip(done, done[1:]):
        longest = max(longest, b - a)
    slowest = max((r[1] - r[0] for r in results if r[2]), default=0.0)
    return {
        "requests": len(results),
        "failed": sum(1 for r in results if not r[2]),
        "longest_without_200_s": round(longest, 3),
        "slowest_ok_s": round(slowest, 3),
    }


a = threading.Thread(target=new_client)
b = threading.Thread(target=keep_client)
a.start()
b.start()
a.join()
b.join()
print(json.dumps({"new": summary(new_results), "keep": summary(keep_results)}))
