#!/usr/bin/env python3
"""Link use over time in a fan-out run (`LINKSTATS=1 KEEP=1 benches/fanout.sh`).

    benches/fanout-links.py WORKDIR [MBIT] [WINDOW_S] [S_MIB]

Reads WORKDIR/links.jsonl (the switch ports' counters every 100 ms) and
prints, per window, how busy the origin's uplink was and the agents'
uplinks and downlinks (mean, min, max) as a share of B. Port p0 is the
origin; on a switch port rx is the host's uplink and tx its downlink.
"""
import json
import sys

work = sys.argv[1]
mbit = float(sys.argv[2]) if len(sys.argv) > 2 else 50.0
window = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
cap = mbit * 1e6 / 8  # bytes per second

samples = []
for line in open(f"{work}/links.jsonl"):
    t, _, js = line.partition(" ")
    try:
        ports = json.loads(js)
    except ValueError:
        continue
    row = {}
    for p in ports:
        name = p.get("ifname", "")
        if name.startswith("p") and name[1:].isdigit():
            s = p["stats64"]
            row[int(name[1:])] = (s["rx"]["bytes"], s["tx"]["bytes"])
    samples.append((float(t), row))
if len(samples) < 2:
    sys.exit("no samples")

# Start at the first window in which anything moved; stop when all is quiet.
def moved(a, b):
    return sum(b[1][i][0] - a[1][i][0] for i in b[1] if i in a[1])

first = next(k for k in range(1, len(samples)) if moved(samples[k - 1], samples[k]) > cap * 0.05)
t0 = samples[first - 1][0]
hosts = sorted(samples[0][1])
agents = [h for h in hosts if h != 0]
print(f"{'t (s)':>7} {'origin up':>9} {'up mean':>8} {'up min':>7} {'down mean':>9} {'down min':>8} {'down max':>8}")
k = first - 1
totals_up, totals_down, spans = 0.0, 0.0, 0
while k < len(samples) - 1:
    j = k
    while j < len(samples) - 1 and samples[j][0] - samples[k][0] < window:
        j += 1
    dt = samples[j][0] - samples[k][0]
    a, b = samples[k][1], samples[j][1]
    up = {h: (b[h][0] - a[h][0]) / dt / cap for h in hosts}
    down = {h: (b[h][1] - a[h][1]) / dt / cap for h in hosts}
    au = [up[h] for h in agents]
    ad = [down[h] for h in agents]
    if max(ad) < 0.02 and samples[k][0] - t0 > 1:
        break
    print(f"{samples[k][0] - t0:7.1f} {up[0]:9.0%} {sum(au) / len(au):8.0%} {min(au):7.0%} "
          f"{sum(ad) / len(ad):9.0%} {min(ad):8.0%} {max(ad):8.0%}")
    totals_up += sum(au) / len(au)
    totals_down += sum(ad) / len(ad)
    spans += 1
    k = j
print(f"mean over {spans} windows: agents' uplinks {totals_up / spans:.0%}, downlinks {totals_down / spans:.0%} of B")

# Whole run, in bytes on the wire (headers and retransmissions included).
a, b = samples[0][1], samples[-1][1]
sent = {h: b[h][0] - a[h][0] for h in hosts}
received = {h: b[h][1] - a[h][1] for h in hosts}
if len(sys.argv) > 4:
    size = float(sys.argv[4]) * (1 << 20)
    print(f"origin sent {sent[0] / size:.3f} × S on the wire; the agents received "
          f"{sum(received[h] for h in agents) / (len(agents) * size):.3f} × S each on average")
lost = sum(sent.values()) - sum(received.values())
print(f"sent {sum(sent.values()) / 1e6:.1f} MB, received {sum(received.values()) / 1e6:.1f} MB: "
      f"{lost / max(1, sum(sent.values())):.1%} dropped at the downlinks")
