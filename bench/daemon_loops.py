#!/usr/bin/env python3
"""bench/daemon.py's in-process loops, in a process of their own that imports what the daemon
imports and nothing else: the bench's own modules (the fabric emulator, the e2e harness and
pytest with it) would double the heap measured and change how it grows.

    python bench/daemon_loops.py SETUP.json RESULT.json

SETUP.json: the sandbox root, waagent.conf and media the bench made, the fabric's URLs (it
serves from its own process), `loops`, `warm`, `idle_warm`, `idle_passes`. The Daemon
provisions, then runs `idle_passes` goal-state passes alone (their CPU), then `loops` passes
with a new incarnation before every 10th. RESULT.json: the figures bench/daemon.py prints.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _mappings() -> list[tuple[int, int, str, str]]:
    """(start, end, permissions, path) of this process's mappings."""
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        found.append((start, end, fields[1], fields[5] if len(fields) > 5 else ""))
    return found


def interned_table() -> dict[str, int] | None:
    """CPython 3.11's dict of interned strings (unicodeobject.c's static `interned`): its
    live strings and its table size. At a resize (when its free slots, which dead strings
    also use up, run out) the table is rebuilt at the smallest power of two >= 3 x live
    (dictobject.c GROWTH_RATE): it doubles only when more than a third of its size is live.

    Found without symbols: among the words of the interpreter's writable data (where the
    static lives) that point to a dict, the dict whose every entry maps a string to itself
    (interned[s] is s), the largest. Layouts: Include/internal/pycore_dict.h (3.11, 64-bit).
    None on another Python. It imports ctypes (whose own names, ~160, then count too): it
    is called after every other figure is taken."""
    if sys.version_info[:2] != (3, 11) or sys.maxsize != 2**63 - 1:
        return None
    import ctypes

    maps = _mappings()
    readable = [(start, end) for start, end, perms, _ in maps if perms.startswith("r")]

    def mapped(address: int, size: int) -> bool:
        return any(start <= address and address + size <= end for start, end in readable)

    def word(address: int) -> int:
        return ctypes.c_uint64.from_address(address).value

    dict_type = id(dict)
    image = next(path for start, end, _, path in maps if start <= dict_type < end)
    data, after_image = [], False
    for start, end, perms, path in maps:
        # The image's .data, and its .bss in the anonymous mapping right after it.
        if perms.startswith("rw") and (path == image or (after_image and not path)):
            data.append((start, end))
        after_image = path == image or (after_image and not path and perms.startswith("rw"))
    best: dict[str, int] | None = None
    for start, end in data:
        for address in range(start, end, 8):
            candidate = word(address)
            if candidate % 8 or not mapped(candidate, 48) or word(candidate + 8) != dict_type \
                    or word(candidate + 40):  # a split table (ma_values) is not it
                continue
            keys = word(candidate + 32)
            if not mapped(keys, 32):
                continue
            log2_size, log2_index_bytes, kind = ctypes.string_at(keys + 8, 3)
            live, entries = word(candidate + 16), word(keys + 24)
            sample = min(entries, 200)
            first = keys + 32 + (1 << log2_index_bytes)
            if kind != 1 or live < 1000 or not mapped(first, 16 * sample):
                continue
            pairs = [(word(first + 16 * i), word(first + 16 * i + 8)) for i in range(sample)]
            used = [(key, value) for key, value in pairs if value]
            if len(used) > sample // 2 and all(key == value for key, value in used) and (
                    best is None or live > best["live"]):
                best = {"live": live, "size": 1 << log2_size}
    return best


def loops(setup: dict[str, Any]) -> dict[str, Any]:
    from graph.daemon import Daemon
    from tasks.extension_status import SETTLED_NS
    from wire.http import HttpClient

    # The fabric's control channel, through the agent's own HTTP client: nothing new loaded.
    http = HttpClient()

    def new_incarnation() -> None:
        http.request("POST", setup["urls"]["control"] + "/control",
                     body=json.dumps({"action": "new-incarnation"}).encode(),
                     headers={"Content-Type": "application/json"})

    daemon = Daemon({"root": setup["root"], "conf": setup["conf"],
                     "wireserver": setup["urls"]["wire"],
                     "hostplugin": setup["urls"]["hostplugin"], "media": setup["media"]})
    if daemon.run_graph("provision", why="start") != 0:
        raise RuntimeError("the sandbox did not provision")
    # The goal-state pass alone (no monitors, nothing new): its CPU per pass. Its first
    # loop comes Extensions.InitialGoalStatePeriod after provisioning, when the files the
    # status is read from are old enough to be trusted by their stamps (StatusParts).
    time.sleep(SETTLED_NS / 1e9)
    for _ in range(setup["idle_warm"]):
        daemon.goal_state_pass()
    cpu0 = process_cpu()
    for _ in range(setup["idle_passes"]):
        daemon.goal_state_pass()
    idle_pass_ms = 1000 * (process_cpu() - cpu0) / setup["idle_passes"]
    total, warm = setup["loops"], setup["warm"]
    # (loop, RSS MB, blocks the Python allocator holds): RSS can step where the live heap
    # does not (an interpreter table that resizes, arenas that stay mapped).
    trace: list[tuple[int, float, int]] = []
    started = time.monotonic()
    warm_rss = warm_at = 0.0
    for index in range(1, total + 1):
        if index % 10 == 0:
            new_incarnation()
        daemon.goal_state_pass()
        if index == warm:
            warm_rss, warm_at = vm_rss_mb(), time.monotonic()
        if index % max(1, total // 10) == 0:
            trace.append((index, round(vm_rss_mb(), 2), sys.getallocatedblocks()))
    took = time.monotonic() - started
    return {"loops": total, "warm": warm, "warm_rss": warm_rss, "end_rss": vm_rss_mb(),
            "idle_pass_ms": idle_pass_ms, "seconds": took,
            "after_warm_seconds": took - (warm_at - started),
            "graph_runs": daemon.state["graph_runs"], "trace": trace,
            "modules": len(sys.modules),
            "incarnation": daemon.state["goal_state"].get("incarnation")}


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1].startswith("-"):
        print(__doc__, file=sys.stderr)  # bench/daemon.py runs it; a person asked for help
        return 2
    setup = json.loads(Path(sys.argv[1]).read_text())
    figures = loops(setup)
    figures["interned"] = interned_table()
    Path(sys.argv[2]).write_text(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
