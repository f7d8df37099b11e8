"""A small demo graph for the views' tests (plan, graph, status), and helpers to run them.

The demo area uses what real areas use: an `Inputs` fingerprint of a config option
(ResourceDisk.SwapSizeMB), a secret fact, a `Probe` of the real file, targets and a
file_dep between tasks, all through the Context's FileSystem (so plan mode holds).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from doit.cmd_base import NamespaceTaskLoader

from graph import loader
from graph.context import Context
from graph.main import WaagentDoitMain
from graph.uptodate import Inputs, Probe

Namespace = dict[str, Any]


def swap_conf_text(ctx: Context) -> str:
    return f"size={ctx.conf.number('ResourceDisk.SwapSizeMB')}\n"


def make_state_dir(ctx: Context) -> None:
    ctx.fs.mkdir(ctx.lib_dir / "demo", why="demo state", mode=0o700)


def write_swap_conf(ctx: Context) -> None:
    ctx.fs.write(ctx.path("etc/demo-swap.conf"), swap_conf_text(ctx), why="swap settings")


def write_motd(ctx: Context) -> None:
    source = ctx.path("etc/demo-swap.conf")
    text = source.read_text() if source.exists() else ""
    ctx.fs.write(ctx.path("etc/motd-demo"), "swap " + text, why="message of the day")


def write_token_copy(ctx: Context) -> None:
    ctx.fs.write(ctx.lib_dir / "demo-token.seen", "seen\n", why="token seen", mode=0o600)


def swap_conf_problem(ctx: Context) -> str | None:
    path = ctx.path("etc/demo-swap.conf")
    if not path.exists():
        return "/etc/demo-swap.conf missing"
    if path.read_text() != swap_conf_text(ctx):
        return f"/etc/demo-swap.conf says {path.read_text().strip()}, want {swap_conf_text(ctx).strip()}"
    return None


def demo_tasks(ctx: Context) -> Any:
    """demo: a state dir, a swap setting, a motd made from it, a secret token"""
    swap_conf = str(ctx.path("etc/demo-swap.conf"))
    yield {"name": "state-dir", "doc": "demo state directory",
           "actions": [(make_state_dir, [ctx])],
           "uptodate": [Inputs("state-dir", lambda: {"Lib.Dir": ctx.conf["Lib.Dir"]})]}
    yield {"name": "swap-conf", "doc": "write the swap size to /etc/demo-swap.conf",
           "actions": [(write_swap_conf, [ctx])], "task_dep": ["demo:state-dir"],
           "targets": [swap_conf],
           "uptodate": [Inputs("swap", lambda: {
               "ResourceDisk.SwapSizeMB": ctx.conf["ResourceDisk.SwapSizeMB"]}),
               Probe("swap conf", lambda: swap_conf_problem(ctx))]}
    yield {"name": "motd", "doc": "message of the day from the swap settings",
           "actions": [(write_motd, [ctx])], "file_dep": [swap_conf],
           "targets": [str(ctx.path("etc/motd-demo"))]}
    token = ctx.path("var/lib/demo-token")
    yield {"name": "token", "doc": "notice the provisioning token",
           "actions": [(write_token_copy, [ctx])], "task_dep": ["demo:state-dir"],
           "uptodate": [Inputs("token", lambda: {
               "secret:token": token.read_text() if token.exists() else ""})]}


def demo_namespace(root: Path) -> Namespace:
    """The real graph for `root` plus the demo area (and a `demo` group)."""
    namespace = loader.dodo_namespace({"root": str(root)})
    ctx = loader.PROCESS.context
    assert ctx is not None

    def task_demo() -> Any:
        """demo: a state dir, a swap setting, a motd made from it, a secret token"""
        yield from demo_tasks(ctx)

    namespace["task_demo"] = task_demo
    return namespace


def cyclic_namespace(root: Path) -> Namespace:
    """A graph whose tasks wait for each other in a ring: a -> b -> c -> a."""
    namespace = loader.dodo_namespace({"root": str(root)})

    def task_ring() -> Any:
        """a ring of tasks"""
        for this, after in (("a", "c"), ("b", "a"), ("c", "b")):
            yield {"name": this, "doc": f"ring task {this}", "actions": None,
                   "task_dep": [f"ring:{after}"]}

    namespace["task_ring"] = task_ring
    return namespace


class BuiltLoader(NamespaceTaskLoader):  # type: ignore[misc]
    """Loads a namespace built by a function (as WaagentLoader does with the real graph)."""

    def __init__(self, build: Callable[[], Namespace]) -> None:
        super().__init__()
        self.build = build

    def load_doit_config(self) -> dict[str, Any]:
        self.namespace = self.build()
        return super().load_doit_config()  # type: ignore[no-any-return]


def run_command(args: list[str], build: Callable[[], Namespace] | None = None,
                ) -> tuple[int, str, str]:
    """Run an agent doit command in this process: (status, stdout, stderr)."""
    main = WaagentDoitMain()
    if build is not None:
        main.task_loader = BuiltLoader(build)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main.run(args)
    return int(status or 0), out.getvalue(), err.getvalue()


def tree_digest(path: Path) -> str:
    """A digest of every name, type, mode and content below `path` (for "changes nothing")."""
    digest = hashlib.sha256()
    if not path.exists():
        return "absent"
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            st = full.lstat()
            digest.update(f"{full.relative_to(path)}\0{st.st_mode}\0".encode())
            if full.is_file() and not full.is_symlink():
                digest.update(full.read_bytes())
    return digest.hexdigest()


def write_conf(root: Path, options: dict[str, object]) -> None:
    """/etc/waagent.conf in the sandbox with these options."""
    conf = root / "etc/waagent.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("".join(f"{k}={v}\n" for k, v in options.items()))


def test_demo_area_runs_and_is_then_up_to_date(sandbox: Path, tmp_path: Path) -> None:
    write_conf(sandbox, {"ResourceDisk.SwapSizeMB": 2048})
    status, out, err = run_command(["run", "demo"], lambda: demo_namespace(sandbox))
    assert status == 0, out + err
    assert (sandbox / "etc/demo-swap.conf").read_text() == "size=2048\n"
    # doit's run reports on the stdout it saw at import: give it a file.
    report = tmp_path / "run.txt"
    status, _out, _err = run_command(["run", "-o", str(report), "demo"],
                                     lambda: demo_namespace(sandbox))
    assert status == 0 and "0 ran, 0 failed, 4 up to date" in report.read_text()
