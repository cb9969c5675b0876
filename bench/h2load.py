#!/usr/bin/env python3
"""Sums up the h2load processes of one HTTP/2 passthrough run (bench/run.sh,
scenario h2): DIR holds each process's output (N.out) and its per-request
log (N.log: start µs since the epoch, status, µs to the end of the
response). Prints one JSON line shaped like bench/passthrough.lua's, so that
the report reads both alike.

    python3 bench/h2load.py DIR
"""

import json
import re
import statistics
import sys
from pathlib import Path


def percentile(ordered, p):
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def main():
    run = Path(sys.argv[1])
    succeeded = failed = 0
    for out in run.glob("*.out"):
        found = re.search(r"(\d+) succeeded, (\d+) failed", out.read_text())
        if not found:
            sys.exit(f"h2load.py: {out} has no result line")
        succeeded += int(found[1])
        failed += int(found[2])
    starts, ends, latencies = [], [], []
    for log in run.glob("*.log"):
        for line in log.read_text().splitlines():
            start, status, took = line.split("\t")
            if 200 <= int(status) < 300:
                starts.append(int(start))
                ends.append(int(start) + int(took))
                latencies.append(int(took))
    if not latencies:
        sys.exit("h2load.py: no request succeeded")
    latencies.sort()
    print(json.dumps({
        "requests": succeeded,
        "duration_us": max(ends) - min(starts),
        "errors": {"failed": failed},
        "latency_us": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "p999": percentile(latencies, 99.9),
            "max": latencies[-1],
            "mean": round(statistics.fmean(latencies), 1),
        },
    }))


if __name__ == "__main__":
    main()
