#!/usr/bin/env python3
"""The log collector's time and memory on a VM root holding 200 MB of logs.

    .venv/bin/python bench/logcollector.py [--runs 5] [--mb 200] [--full]

A sandbox root (a directory, not a VM) gets log-like text that compresses as real logs
do (timestamps, counters, ids; no sparse zeros): the agent log and its rotations,
syslog and messages with rotations, extension logs, status copies. Then
`waagent -collect-logs root=...` runs as its own process, as the daemon starts it
(without systemd-run: the figures are the collector's own, not a cgroup's).
Prints, per run and as medians: wall and CPU seconds, peak RSS (the kernel's
ru_maxrss of the child), peak anonymous memory (RssAnon sampled every 20 ms), files
taken, bytes before and after compression. The target: peak RSS <= 50 MB.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024

# Share of the total per planted file (the rest of the names get small files).
LAYOUT = {
    "var/log/waagent.log": 0.08, "var/log/waagent.log.1": 0.12,
    "var/log/syslog": 0.20, "var/log/syslog.1": 0.20, "var/log/messages": 0.10,
    "var/log/auth.log": 0.05,
}
EXTENSION_LOGS = 20  # sharing the remaining quarter


def log_text(size: int, seed: int) -> bytes:
    """`size` bytes of syslog-like lines."""
    rng = random.Random(seed)
    words = ("eth0 dhcp lease renewed route added kernel scsi timeout set to 300 "
             "walinuxagent goal state incarnation status uploaded via hostgaplugin "
             "extension handler enable command exited with code 0 systemd started "
             "session of user azureuser sshd accepted publickey for from port").split()
    lines = []
    total = 0
    t = 1_700_000_000
    while total < size:
        t += rng.randint(0, 3)
        line = (f"{time.strftime('%b %d %H:%M:%S', time.gmtime(t))} vm-1 "
                f"{rng.choice(['kernel', 'systemd[1]', 'sshd[812]', 'WALinuxAgent'])}: "
                f"{' '.join(rng.choices(words, k=rng.randint(4, 14)))} "
                f"id={rng.getrandbits(64):016x} n={rng.randint(0, 99999)}\n").encode()
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:size]


def plant(root: Path, total: int) -> int:
    """Write the logs; the bytes planted."""
    planted = 0
    block = log_text(4 * MiB, 1)  # repeated with a varying prefix: generation stays fast

    def write(path: Path, size: int, seed: int) -> None:
        nonlocal planted
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            left = size
            n = 0
            while left > 0:
                chunk = f"# part {seed}-{n}\n".encode() + block[(n * 7919) % MiB:]
                out.write(chunk[:left])
                left -= min(len(chunk), left)
                n += 1
        planted += size

    for index, (name, share) in enumerate(LAYOUT.items()):
        write(root / name, int(total * share), index)
    rest = total - planted
    for index in range(EXTENSION_LOGS):
        write(root / f"var/log/azure/Ext.{index}/1.0/extension.log", rest // EXTENSION_LOGS,
              100 + index)
    for incarnation in range(1, 6):
        status = root / f"var/lib/waagent/history/incarnation_{incarnation}/waagent_status.json"
        status.parent.mkdir(parents=True, exist_ok=True)
        status.write_text('{"version": "1.1", "aggregateStatus": {}}\n')
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/hostname").write_text("vm-1\n")
    return planted


def rss_anon(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"RssAnon:\s+(\d+) kB", text)
    return int(found.group(1)) * 1024 if found else 0


def collect(root: Path, full: bool) -> dict[str, float]:
    argv = [sys.executable, "-m", "graph.cli", "-collect-logs", f"root={root}"]
    if full:
        argv.append("-full")
    started = time.perf_counter()
    child = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak_anon = 0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        peak_anon = max(peak_anon, rss_anon(child.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - started
    output = child.stdout.read().decode() if child.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"collector failed:\n{output}")
    results = (root / "var/lib/waagent/logcollector/results.txt").read_text()
    summary = re.search(r"(\d+) files taken, .*?; (\d+) b before compression", results)
    assert summary, results
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "rss": usage.ru_maxrss * 1024 / MiB, "anon": peak_anon / MiB,
            "files": int(summary.group(1)), "before": int(summary.group(2)) / MiB,
            "zip": (root / "var/lib/waagent/logcollector/logs.zip").stat().st_size / MiB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=200, help="MB of logs to plant")
    parser.add_argument("--full", action="store_true", help="the full manifest")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-logcollector-"))
    try:
        root = tmp / "vm"
        planted = plant(root, args.mb * 1000 * 1000)
        print(f"planted {planted / 1e6:.0f} MB of logs in {root}")
        print(f"{'run':>4} {'wall s':>7} {'cpu s':>6} {'peak RSS MB':>11} {'peak anon MB':>12} "
              f"{'files':>5} {'taken MiB':>9} {'zip MiB':>7}")
        rows = []
        for run in range(1, args.runs + 1):
            row = collect(root, args.full)
            rows.append(row)
            print(f"{run:>4} {row['wall']:>7.2f} {row['cpu']:>6.2f} {row['rss']:>11.1f} "
                  f"{row['anon']:>12.1f} {row['files']:>5.0f} {row['before']:>9.1f} "
                  f"{row['zip']:>7.1f}")
        med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        print(f"{'med':>4} {med['wall']:>7.2f} {med['cpu']:>6.2f} {med['rss']:>11.1f} "
              f"{med['anon']:>12.1f} {med['files']:>5.0f} {med['before']:>9.1f} "
              f"{med['zip']:>7.1f}")
        print(f"max peak RSS {max(r['rss'] for r in rows):.1f} MB (target <= 50 MB), "
              f"max anon {max(r['anon'] for r in rows):.1f} MB (self-limit 25 MiB)")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
