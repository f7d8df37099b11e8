"""What the VM benchmarks share: the e2e lab (tests/e2e/harness.py), a measuring wrapper
that runs inside the VM, and the medians table.

The wrapper runs under the VM's own python3: it notes the wall-clock time just before it
starts the command (the fabric stamps reports with the same clock: there is no time
namespace), waits for it with wait4() and writes to RESULT_FILE the start, the end, the
exit status and ru_maxrss: the peak RSS of the command, or of the largest descendant it
waited for (useradd, ssh-keygen, ...). A command that never ends by itself (waagent
-daemon) is killed when STOP_FILE appears, and measured up to then.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.e2e import harness  # noqa: E402

MEASURE_PATH = "usr/local/libexec/bench-measure"
STOP_FILE = "run/bench-stop"
RESULT_FILE = "run/bench-result.json"
MEASURE = f"""\
#!/usr/bin/python3
# bench-measure COMMAND...: run it; {{"start", "end", "status", "maxrss_kb"}} to /{RESULT_FILE}
import json, os, signal, sys, time
start = time.time()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
while True:
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
        break
    if os.path.exists("/{STOP_FILE}"):
        os.kill(pid, signal.SIGKILL)
        done, status, usage = os.wait4(pid, 0)
        break
    time.sleep(0.005)
with open("/{RESULT_FILE}", "w") as result:
    json.dump({{"start": start, "end": time.time(), "status": status,
               "maxrss_kb": usage.ru_maxrss}}, result)
"""


@dataclass
class Sample:
    """One measured command in the VM."""

    start: float
    end: float
    status: int
    maxrss_kb: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


def install_measure(root: Path) -> None:
    harness.write_file(root / MEASURE_PATH, MEASURE, 0o755)


def start_measured(vm: harness.VirtualMachine, argv: list[str],
                   log: Path) -> subprocess.Popen[bytes]:
    """Start `argv` in the VM under the wrapper (install_measure first); output to `log`."""
    for name in (STOP_FILE, RESULT_FILE):
        (vm.view / name).unlink(missing_ok=True)
    return vm.popen(["/" + MEASURE_PATH, *argv], log)


def finish_measured(vm: harness.VirtualMachine, process: subprocess.Popen[bytes], log: Path,
                    *, kill: bool = False, timeout: float = 300) -> Sample:
    """Wait for a measured command (`kill`: stop it now, through STOP_FILE)."""
    if kill:
        (vm.view / STOP_FILE).touch()
    process.wait(timeout)
    try:
        data = json.loads((vm.view / RESULT_FILE).read_text())
    except (OSError, ValueError):
        raise RuntimeError(f"no measurement; the command said: {log.read_text()[-3000:]}") \
            from None
    return Sample(data["start"], data["end"], data["status"], data["maxrss_kb"])


def measure(vm: harness.VirtualMachine, argv: list[str], log: Path) -> Sample:
    """Run `argv` in the VM to its end, measured."""
    return finish_measured(vm, start_measured(vm, argv, log), log)


def print_table(title: str, header: tuple[str, ...],
                rows: Sequence[tuple[str, ...]]) -> None:
    """A plain text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                       strict=True)]
        print("  ".join(cells).rstrip())


def bench_args(script: str, doc: str | None, runs: int,
               packages: Sequence[str]) -> argparse.Namespace | None:
    """Parse `--runs`/`--keep`; None (after saying why) when the VM lab cannot run here."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--keep", help="keep the labs' logs and records here")
    args = parser.parse_args()
    reason = harness.skip_reason(packages)
    if reason:
        print(f"{script}: {reason}", file=sys.stderr)
        return None
    return args


def median(values: list[float]) -> float:
    return statistics.median(values)


AGENTS = {"waagent-graph": "/" + harness.AGENT_LAUNCHER, "waagent 2.7.3": "/usr/sbin/waagent"}


CPUACCT = Path("/sys/fs/cgroup/cpuacct")  # the cgroup v1 hierarchy of the cpuacct controller


class CpuCgroup:
    """A cpuacct cgroup (v1) the bench makes for one measured command and removes after it:
    the command joins it before it starts (`argv`), so every process it starts, at any depth,
    is charged to `usage_ns()`, in nanoseconds, whether it has exited or not."""

    def __init__(self, name: str) -> None:
        self.path = CPUACCT / name

    def __enter__(self) -> CpuCgroup:
        if not (CPUACCT / "cpuacct.usage").is_file():
            raise RuntimeError(f"no cgroup v1 cpuacct hierarchy at {CPUACCT} (cpuacct.usage): "
                               "the bench counts the agents' CPU there")
        self.path.mkdir()
        try:
            # A short shell loop in the cgroup must be charged to it.
            subprocess.run(self.argv(["sh", "-c", "i=0; while [ $i -lt 20000 ]; do "
                                      "i=$((i+1)); done"]), check=True)
            if self.usage_ns() <= 0:
                raise RuntimeError(f"{self.path}: a process that ran in it was not charged")
        except BaseException:
            self.path.rmdir()
            raise
        return self

    def argv(self, command: list[str]) -> list[str]:
        """`command`, started in this cgroup (the host's sh joins it, then execs)."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"),
                *command]

    def usage_ns(self) -> int:
        return int((self.path / "cpuacct.usage").read_text())

    def holds(self, pid: int) -> bool:
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return False
        return any(line.split(":", 2)[1:] == ["cpuacct", "/" + self.path.name]
                   for line in lines)

    def __exit__(self, *exc: object) -> None:
        # The lab has killed what ran in it; the last exits can take a moment.
        harness.wait_until(lambda: not (self.path / "cgroup.procs").read_text().strip(), 30,
                           f"the processes of {self.path} to exit", 0.2)
        self.path.rmdir()


@contextlib.contextmanager
def daemon_lab(work: Path, scenario: Path, agent: str, bench: str, settle: float,
               cgroup: CpuCgroup | None = None,
               ) -> Iterator[tuple[harness.Lab, subprocess.Popen[bytes]]]:
    """A VM of the e2e lab holding both agents, `agent -daemon` started in it (its output in
    work/agent.log; in `cgroup`, if given) and Ready. The namespaces carry the bench's name,
    the agent and this process's PID, so two benches can run at once."""
    side = "ours" if agent == "waagent-graph" else "wa"
    with harness.lab(work, scenario, conf=None, packages=harness.WAAGENT_PACKAGES,
                     prepare=harness.prepare_both_agents, tag=f"{bench}-{side}-{os.getpid()}") as lab:
        lab.vm.dhcp()
        argv = lab.vm.exec_argv([AGENTS[agent], "-daemon"])
        with open(work / "agent.log", "wb") as log:
            process = subprocess.Popen(cgroup.argv(argv) if cgroup else argv,
                                       env=harness.VM_ENV, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT)
        lab.fabric.wait_for_health("Ready", settle)
        yield lab, process


def memory_mb(pids: list[int], source: str, key: str) -> float:
    """A /proc/PID/<source> field (`status` VmRSS, `smaps_rollup` Pss) summed, in MB;
    processes gone meanwhile count nothing."""
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
                if line.startswith(key + ":"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "-"
