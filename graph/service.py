"""The agent as the system's service: `-register-service`, `-start`, `-run-exthandlers`.

`-register-service` installs the systemd unit under the distribution's name
(`walinuxagent.service` on Debian and Ubuntu, `waagent.service` elsewhere), so that
images and docs that restart the agent by name keep working, plus the logrotate file
for /var/log/waagent.log, and enables the unit: with systemctl on the running system,
with the link `systemctl enable` makes on an image root.
"""

from __future__ import annotations

import logging
import os
import shutil
import string
import sys
import time
from importlib.resources import files
from pathlib import Path

from graph.context import DEFAULT_CONF, Context, make_context
from system.fs import MARKER
from tasks import inputs

log = logging.getLogger("waagent.service")

UNIT_DIR = "/etc/systemd/system"
LOGROTATE_FILE = "/etc/logrotate.d/waagent"
# Memory above this is reclaimed from the agent first (MemoryHigh: a limit, not a kill).
MEMORY_HIGH = "64M"
# Where an image's agent is looked for, first found wins.
AGENT_PATHS = ("/usr/sbin/waagent", "/usr/local/sbin/waagent", "/usr/bin/waagent",
               "/usr/local/bin/waagent")
START_TIMEOUT = 30.0


def template(name: str) -> string.Template:
    return string.Template(files("graph").joinpath("templates", name).read_text())


def agent_path(ctx: Context) -> str:
    """The `waagent` the unit starts: this one on the running system, the image's own
    otherwise."""
    if ctx.root.is_host:
        return os.path.realpath(shutil.which("waagent") or sys.argv[0])
    for candidate in AGENT_PATHS:
        if ctx.root.follow(candidate).exists():
            return candidate
    return AGENT_PATHS[0]


def unit_text(ctx: Context) -> str:
    from graph.cli import AGENT_NAME

    return template("waagent.service").substitute(
        marker=MARKER, agent=AGENT_NAME, conf=ctx.var("conf") or DEFAULT_CONF,
        waagent=agent_path(ctx), cpu_quota=ctx.conf.number("Debug.AgentCpuQuota") or 75,
        memory_high=MEMORY_HIGH)


def register_service(variables: dict[str, str]) -> int:
    """Install and enable the unit and the logrotate file."""
    from system import osutil

    ctx = make_context(variables)
    name = inputs.distro(ctx).family_facts.agent_service + ".service"
    unit = ctx.root / f"{UNIT_DIR}/{name}"
    ctx.fs.mkdir(unit.parent, why="systemd units")
    ctx.fs.write(unit, unit_text(ctx), mode=0o644, why=f"the agent's unit, {name}")
    rotated_elsewhere = [p for p in sorted((ctx.root / "etc/logrotate.d").glob("*"))
                         if p.name != "waagent" and "/var/log/waagent.log" in _text(p)]
    if rotated_elsewhere:
        log.info("%s already rotates /var/log/waagent.log: no file of ours",
                 ctx.root.system_path(rotated_elsewhere[0]))
    else:
        ctx.fs.write(ctx.root / LOGROTATE_FILE,
                     template("waagent.logrotate").substitute(marker=MARKER), mode=0o644,
                     why="rotate /var/log/waagent.log")
    if ctx.root.is_host and osutil.systemd_running(ctx.run):
        ctx.run.change(["systemctl", "daemon-reload"], why="systemd reads the new unit")
        ctx.run.change(["systemctl", "enable", name], why=f"start {name} at boot")
    else:
        # What `systemctl enable` leaves: the unit wanted by multi-user.target.
        ctx.fs.symlink(ctx.root / f"{UNIT_DIR}/multi-user.target.wants/{name}",
                       f"{UNIT_DIR}/{name}", why=f"start {name} at boot")
    print(f"{name} installed and enabled")
    return 0


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def start_daemon(argv: list[str], variables: dict[str, str]) -> int:
    """`-start`: the daemon in the background; its PID is in Pid.File once it runs."""
    from system import osutil

    ctx = make_context(variables)
    pid_file = ctx.root / ctx.conf.required_path("Pid.File")
    child = osutil.start_detached(argv)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if int(pid_file.read_text().strip() or 0) == child.pid:
                print(f"waagent daemon started as PID {child.pid} "
                      f"({ctx.root.system_path(pid_file)})")
                return 0
        except (FileNotFoundError, ValueError):
            pass
        if child.poll() is not None:
            print(f"waagent daemon did not start (exit status {child.returncode}): see "
                  "/var/log/waagent.log", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f"waagent daemon (PID {child.pid}) has not written {pid_file} after "
          f"{START_TIMEOUT:.0f} s", file=sys.stderr)
    return 1
