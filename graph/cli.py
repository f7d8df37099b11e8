"""The waagent-compatible command line.

    waagent -help | -version | -show-configuration | -deprovision[+user] | -daemon | -start
            | -serialconsole | -collect-logs [-full] | -register-service | -run-exthandlers
            | -setup-firewall=IP   [-verbose] [-force] [-configuration-path:FILE]
    waagent list | provision | plan | graph | ... [root=DIR conf=FILE]   (doit commands)

Flags take `-`, `--` or `/` as prefix, as waagent does.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence

from graph.version import AGENT_NAME as AGENT_NAME  # re-exported: others read it here
from graph.version import AGENT_VERSION as AGENT_VERSION

# The WALinuxAgent version whose behaviour and files this agent reproduces.
COMPATIBLE_WAAGENT = "2.7.3"

USAGE = f"""usage: waagent [-verbose] [-force] [-help] [-configuration-path:<path>]
               -deprovision[+user] | -register-service | -version | -daemon | -start
               | -run-exthandlers | -show-configuration | -collect-logs [-full]
               | -serialconsole | -setup-firewall=<ip>
       waagent COMMAND [TASK...] [root=DIR] [conf=FILE]
               COMMAND: provision, run, list, info, plan, graph, facts, status, forget,
               clean, ignore, help

{AGENT_NAME} {AGENT_VERSION}: an Azure Linux guest agent built as a doit task graph,
compatible with WALinuxAgent {COMPATIBLE_WAAGENT} (/etc/waagent.conf, /var/lib/waagent).
"""

# Verbs and the doit command line they run; None: the verb has its own entry point (_main).
VERBS: dict[str, list[str] | None] = {
    "deprovision": ["run", "deprovision"],
    "deprovision+user": ["run", "deprovision", "user=y"],
    "daemon": None,
    "start": None,
    "serialconsole": ["run", "serialconsole"],
    "collect-logs": None,
    "register-service": None,
    "run-exthandlers": None,
    "setup-firewall": None,
}
INFO_VERBS = ("help", "version", "show-configuration")
FLAGS = ("verbose", "force", "full")
# waagent 2.x's form, `-setup-firewall -dst_ip=<ip> -uid=<uid> [-w]`, as its boot unit runs it.
FIREWALL_ARGS = ("dst_ip", "uid", "w", "wait")


class UsageError(Exception):
    """A command line waagent would not accept."""


class Invocation:
    """A parsed waagent command line."""

    def __init__(self, verb: str | None = None, verb_arg: str | None = None,
                 flags: set[str] | None = None, conf_path: str | None = None,
                 doit_args: list[str] | None = None) -> None:
        self.verb = verb
        self.verb_arg = verb_arg
        self.flags: set[str] = flags if flags is not None else set()
        self.conf_path = conf_path
        self.doit_args: list[str] = doit_args if doit_args is not None else []
        self.firewall: dict[str, str] = {}


def _strip_prefix(arg: str) -> str | None:
    for prefix in ("--", "-", "/"):
        if arg.startswith(prefix) and len(arg) > len(prefix):
            return arg[len(prefix):]
    return None


def parse(argv: Sequence[str]) -> Invocation:
    """Parse waagent's flags; anything that is not one starts a doit command line."""
    inv = Invocation()
    args = list(argv)
    if args and _strip_prefix(args[0]) is None and "=" not in args[0]:
        inv.doit_args = args
        return inv
    for arg in args:
        body = _strip_prefix(arg)
        if body is None:
            if "=" in arg:  # root=/mnt/image conf=... variables for the engine
                inv.doit_args.append(arg)
                continue
            raise UsageError(f"unexpected argument {arg!r}")
        name, sep, value = body.partition(":") if body.lower().startswith(
            "configuration-path") else body.partition("=")
        lname = name.lower()
        if lname == "configuration-path":
            if not value:
                raise UsageError("-configuration-path needs a file: -configuration-path:FILE")
            inv.conf_path = value
        elif lname in FLAGS:
            inv.flags.add(lname)
        elif lname in FIREWALL_ARGS:  # waagent's own unit: -setup-firewall -dst_ip=IP -uid=N -w
            inv.firewall[lname] = value
        elif lname in VERBS or lname in INFO_VERBS or lname in ("h", "?"):
            if inv.verb is not None:
                raise UsageError(f"two actions given: -{inv.verb} and {arg}")
            inv.verb = "help" if lname in ("h", "?") else lname
            inv.verb_arg = value or None
        else:
            raise UsageError(f"unknown option {arg!r} (waagent -help lists them)")
    return inv


def print_version(root_dir: str = "/") -> None:
    """Three lines laid out as waagent 2.7.3's, which scripts parse:
    `WALinuxAgent-2.7.3.0 running on debian 12`, `Python: 3.11.2`, `Goal state agent: 2.7.3.0`."""
    import platform

    from facts.distro import os_release
    from system import Root
    from system.errors import ProbeFailed

    try:
        release = os_release(Root(root_dir))
    except ProbeFailed:
        release = {}
    distro_id = release.get("ID", "unknown").strip('" ').lower()
    print(f"{AGENT_NAME}-{AGENT_VERSION} running on {distro_id} {release.get('VERSION_ID', '')}")
    print(f"Python: {platform.python_version()}")
    # No extension handler runs apart from this agent yet: it handles the goal state.
    print(f"Goal state agent: {AGENT_VERSION}")


def show_configuration(inv: Invocation, root_dir: str) -> int:
    """Every option as `Key = value`, sorted by name, as waagent prints them."""
    from conf import ConfigError, load_config
    from conf.config import default_config
    from system import Root

    path = inv.conf_path or str(Root(root_dir) / "etc/waagent.conf")
    try:
        conf = load_config(path) if (inv.conf_path or os.path.exists(path)) else default_config()
    except ConfigError as err:
        print(f"waagent: {err}", file=sys.stderr)
        return 1
    for name, value in sorted(conf.items()):
        print(f"{name} = {value}")
    return 0


def _engine_vars(inv: Invocation) -> list[str]:
    """Variables for the engine from waagent's flags (root=/conf= given as such pass as is)."""
    extra = [a for a in inv.doit_args if "=" in a] if inv.verb else []
    if inv.conf_path and not any(a.startswith("conf=") for a in [*extra, *inv.doit_args]):
        extra.append(f"conf={inv.conf_path}")
    for flag in sorted(inv.flags):
        if not any(a.startswith(f"{flag}=") for a in [*extra, *inv.doit_args]):
            extra.append(f"{flag}=y")
    return extra


def main(argv: Sequence[str] | None = None, run_doit: Callable[[list[str]], int] | None = None,
         ) -> int:
    """Entry point of the `waagent` console script."""
    try:
        status = _main(argv, run_doit)
        # Output smaller than the buffer meets a closed pipe only here, not at exit.
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # The reader went away (`waagent -show-configuration | head`): stop quietly, as
        # other tools do, and keep Python from failing again when it flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise
        # A read-only root or a full disk before any task ran (the crash campaign).
        print(f"waagent: cannot write {err.filename or 'the agent state'}: {err.strerror}; "
              "make the file system writable or make room, then run again", file=sys.stderr)
        return 1


def _main(argv: Sequence[str] | None, run_doit: Callable[[list[str]], int] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        inv = parse(args)
    except UsageError as err:
        print(f"waagent: {err}", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    if run_doit is None:
        if inv.verb is None and inv.doit_args[:1] == ["provision"]:
            from graph.loader import start_early_work

            start_early_work([*inv.doit_args[1:], *_engine_vars(inv)])
        from graph.main import run_doit as engine

        run_doit = engine
    variables = dict(a.split("=", 1) for a in inv.doit_args if "=" in a)
    root_dir = variables.get("root", "/")
    if inv.verb is None and inv.doit_args and "=" not in inv.doit_args[0]:
        command = inv.doit_args[0]
        rest = inv.doit_args[1:]
        # `waagent provision` runs the provision group, as `doit provision` does.
        if command not in _doit_commands():
            return run_doit(["run", command, *rest, *_engine_vars(inv)])
        return run_doit([command, *rest, *_engine_vars(inv)])
    if inv.verb in (None, "help"):
        print(USAGE)
        return 0
    if inv.verb == "version":
        print_version(root_dir)
        return 0
    if inv.verb == "show-configuration":
        return show_configuration(inv, root_dir)
    engine_vars = dict(a.split("=", 1) for a in _engine_vars(inv))
    if inv.verb == "daemon":
        from graph.daemon import run_daemon

        return run_daemon(engine_vars)
    if inv.verb == "run-exthandlers":
        from graph.daemon import run_goal_state_pass

        return run_goal_state_pass(engine_vars)
    if inv.verb == "collect-logs":
        from tasks.logcollector import run_collect_logs

        return run_collect_logs(engine_vars)
    if inv.verb == "register-service":
        from graph.service import register_service

        return register_service(engine_vars)
    if inv.verb == "start":
        from graph.service import start_daemon

        argv = [os.path.realpath(sys.argv[0]), "-daemon", *_engine_vars(inv)]
        if sys.argv[0].endswith(".py") or sys.argv[0] == "-c":
            argv = [sys.executable, "-m", "graph.cli", "-daemon", *_engine_vars(inv)]
        return start_daemon(argv, engine_vars)
    if inv.verb == "setup-firewall":
        from tasks.network import setup_firewall_command

        address = inv.verb_arg or inv.firewall.get("dst_ip")
        uid = inv.firewall.get("uid") or "0"
        if not address or not uid.isdigit():
            print("waagent: -setup-firewall needs the WireServer's address: "
                  "-setup-firewall=<ip>", file=sys.stderr)
            return 2
        if os.path.realpath(root_dir) != "/":
            print(f"waagent: -setup-firewall sets the running system's rules; root={root_dir} "
                  "is not it (network:firewall-boot writes an image's boot unit)",
                  file=sys.stderr)
            return 2
        return setup_firewall_command(address, int(uid))
    route = VERBS.get(inv.verb)
    if route is None:
        print(f"waagent: -{inv.verb} is not implemented yet in {AGENT_NAME} {AGENT_VERSION}",
              file=sys.stderr)
        return 2
    return run_doit([*route, *_engine_vars(inv)])


def _doit_commands() -> set[str]:
    return {"run", "list", "info", "help", "forget", "clean", "ignore", "plan", "graph",
            "facts", "status", "reset-dep", "strace", "dumpdb", "tabcompletion"}


if __name__ == "__main__":
    sys.exit(main())
