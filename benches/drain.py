#!/usr/bin/env python3
"""Times a stopped forwarder draining the frames queued for it.

Usage: drain.py PID COUNTER [SETTLE_MS]

PID is a forwarder stopped with SIGSTOP whose input queues hold frames; COUNTER is a file
holding a packet count that grows as it forwards (an interface's statistics/rx_packets on the
far side). Reads the counter, resumes PID with SIGCONT, and reads the counter every half
millisecond (sleeping in between: the poller takes next to no CPU from the forwarder) until it
has not moved for SETTLE_MS (default 100). Prints one JSON object: the frames forwarded, the
seconds from the resume to the last read that saw the counter move, and the rate ("fps").

The rate is taken over the middle of the drain, between the first read past a tenth of the
frames and the last read short of nine tenths: neither the forwarder's wake-up after SIGCONT
nor the poll that notices the end (each up to a millisecond or so) is in it. A drain shorter
than a few polls gives its whole span's rate instead, "middle": false.
"""
import json
import os
import signal
import sys
import time

if len(sys.argv) not in (3, 4):
    sys.exit(__doc__)
pid, counter = int(sys.argv[1]), sys.argv[2]
settle = (int(sys.argv[3]) if len(sys.argv) == 4 else 100) / 1000


def read():
    with open(counter) as f:
        return int(f.read())


start = read()
t0 = time.monotonic()
os.kill(pid, signal.SIGCONT)
samples = [(t0, start)]
last, moved = start, t0
deadline = t0 + 60
while True:
    time.sleep(0.0005)
    now = time.monotonic()
    v = read()
    if v != last:
        last, moved = v, now
        samples.append((now, v))
    elif now - moved >= settle or now > deadline:
        break
frames, secs = last - start, moved - t0
lo, hi = start + frames / 10, start + frames * 9 / 10
middle = [(t, v) for t, v in samples if lo <= v <= hi]
in_middle = len(middle) >= 3 and middle[-1][0] > middle[0][0]
if in_middle:
    (ta, va), (tb, vb) = middle[0], middle[-1]
    fps = (vb - va) / (tb - ta)
else:
    fps = frames / secs if frames and secs > 0 else 0
print(json.dumps({"frames": frames, "seconds": round(secs, 6), "fps": round(fps), "middle": in_middle}))
