#!/usr/bin/env python3
"""Where the time of a fan-out run went, from its debug logs.

    sudo RUST_LOG=strata::p2p=debug KEEP=1 N=16 BASELINE=0 benches/fanout.sh
    python3 benches/fanout-timeline.py /var/tmp/strata-fanout-XXXXXX

Per second of the run: distinct pieces the origin has injected, pieces the
agents hold (mean, min, max), pieces the origin and the agents started
sending; then the hop delay (a piece arriving at an agent from a peer,
minus when that peer got it) and the busy answers per agent.
"""
import collections
import datetime
import glob
import os
import re
import sys

if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
    sys.exit(__doc__)
os.chdir(sys.argv[1])
ansi = re.compile(r"\x1b\[[0-9;]*m")
got, arrivals, sends, busy = {}, [], collections.defaultdict(list), collections.Counter()
for f in ["origin.err"] + sorted(glob.glob("a*.err")):
    who = f[:-4]
    for line in open(f, errors="replace"):
        line = ansi.sub("", line)
        m = re.search(r"piece (\d+) from (\S+) at ([\d.]+)", line)
        if m:
            t, p, src = float(m.group(3)), int(m.group(1)), m.group(2)
            got[(who, p)] = t
            arrivals.append((who, p, src, t))
        m = re.match(r"(\S+)Z\s+DEBUG.*p2p: sending a piece to", line)
        if m:
            sends[who].append(datetime.datetime.fromisoformat(m.group(1)).timestamp())
        if "busy" in line:
            busy[who] += 1
if not arrivals:
    sys.exit("no piece arrivals in the logs: run the bench with RUST_LOG=strata::p2p=debug KEEP=1")
agents = sorted({a for a, *_ in arrivals})
t0 = min((min(v) for v in sends.values() if v), default=0)
print("s  injected  held(mean min max)  sent(origin, agents mean)")
for sec in range(1, int(max(a[3] for a in arrivals)) + 2):
    injected = {p for _, p, src, t in arrivals if src == "origin" and t <= sec}
    held = [sum(1 for a, _, _, t in arrivals if a == who and t <= sec) for who in agents]
    began = lambda who: sum(1 for t in sends.get(who, []) if sec - 1 <= t - t0 < sec)
    print(f"{sec:2} {len(injected):8}  {sum(held) / len(held):6.1f} {min(held):4} {max(held):4}"
          f"  {began('origin'):6} {sum(began(w) for w in agents) / len(agents):6.1f}")
hops = sorted(t - got[(src, p)] for _, p, src, t in arrivals if src != "origin" and (src, p) in got)
if hops:
    q = lambda x: hops[int(x * (len(hops) - 1))]
    print(f"hop delay over {len(hops)} peer pieces: p10 {q(.1):.2f} s, p50 {q(.5):.2f} s, "
          f"p90 {q(.9):.2f} s, max {hops[-1]:.2f} s")
print(f"busy answers per agent: {sum(busy[w] for w in agents) / len(agents):.0f}")
