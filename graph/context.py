"""Context: what every task generator and action is given (root, config, runner, files)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from conf import Config, load_config
from conf.config import default_config
from system import FileSystem, Root, Runner

DEFAULT_CONF = "/etc/waagent.conf"


class Context:
    """One agent run: the root it works on, its configuration and its system boundary."""

    def __init__(self, root: Root, conf: Config, run: Runner, fs: FileSystem,
                 vars: dict[str, str] | None = None, memo: dict[str, Any] | None = None,
                 ) -> None:
        self.root = root
        self.conf = conf
        self.run = run
        self.fs = fs
        # Command-line variables (root=, conf=, media=, wireserver=...), as given.
        self.vars: dict[str, str] = vars if vars is not None else {}
        # Per-run memo for facts several tasks read (filled lazily, never at load for speed).
        self.memo: dict[str, Any] = memo if memo is not None else {}

    @cached_property
    def lib_dir(self) -> Path:
        """`Lib.Dir` inside the root: the agent's state directory (root and configuration
        are fixed for a run; the checks ask for it ~40 times)."""
        return self.root / self.conf.required_path("Lib.Dir")

    def path(self, system_path: str) -> Path:
        """A system path (as the VM sees it) inside the root."""
        return self.root / system_path

    def command_path(self, real: Path) -> str:
        """How a command run by `ctx.run` names a real path: inside a chroot it is the
        path as the VM sees it; otherwise the real path."""
        return self.root.system_path(real) if self.run.chroot else str(real)

    @property
    def scratch_dir(self) -> Path | None:
        """Where candidate files go so that a command in a chroot can read them."""
        return self.root / "tmp" if self.run.chroot else None

    def var(self, name: str, default: str | None = None) -> str | None:
        """A command-line variable (`name=value`)."""
        return self.vars.get(name, default)


def make_context(variables: dict[str, str], *, plan: bool = False) -> Context:
    """Build the Context from command-line variables: root=DIR conf=FILE chroot=y ...

    The configuration file is looked up inside the root unless given as `conf=`.
    A missing /etc/waagent.conf means the built-in defaults, as waagent does.
    """
    root = Root(variables.get("root") or os.environ.get("WAAGENT_ROOT") or "/")
    conf_arg = variables.get("conf")
    if conf_arg:
        conf = load_config(conf_arg)
    else:
        conf_file = root.follow(DEFAULT_CONF)  # an absolute link is read inside the root
        conf = load_config(conf_file) if conf_file.exists() else default_config()
    chroot = variables.get("chroot", "n").lower() in ("y", "yes", "1", "true")
    runner = Runner(root=root, plan=plan, chroot=chroot)
    return Context(root=root, conf=conf, run=runner, fs=FileSystem(runner), vars=dict(variables))
