"""Serial console: the kernel writes to ttyS0 from early boot (PLATFORM.md §7).

`serialconsole:kernel-cmdline` puts `console=ttyS0 earlyprintk=ttyS0` on the kernel
command line through the root's boot loader tooling: grubby where the distribution
uses it (RHEL family, BLS entries), else GRUB 2's /etc/default/grub
(GRUB_CMDLINE_LINUX) followed by the distribution's regeneration of grub.cfg, else
GRUB legacy's menu.lst/grub.conf `kernel` lines. Arguments already there are kept;
running it twice changes nothing.

The boot loader editing here is the one home for kernel arguments: the kernel area's
NUMA task (`numa=off`) uses `boot_loader_task` with its own arguments.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Callable, Iterator
from typing import Any

from graph.context import Context
from graph.uptodate import Probe
from system.errors import AgentError
from tasks import TaskDict

log = logging.getLogger("waagent.serialconsole")

CONSOLE_ARGS = ("console=ttyS0", "earlyprintk=ttyS0")
DEFAULT_GRUB = "/etc/default/grub"
_CMDLINE = re.compile(r"^(\s*)GRUB_CMDLINE_LINUX=(.*)$")
# GRUB legacy (RHEL 6 without grubby, SLES 11): read at boot, nothing to regenerate.
LEGACY_GRUB = ("/boot/grub/menu.lst", "/boot/grub/grub.conf")
# Where each GRUB flavour keeps its generated configuration, and the command that makes it.
_GRUB_CONFIGS = (
    ("/boot/grub2/grub.cfg", ("grub2-mkconfig", "-o", "/boot/grub2/grub.cfg")),
    ("/boot/grub/grub.cfg", ("grub-mkconfig", "-o", "/boot/grub/grub.cfg")),
)


class BootLoaderError(AgentError):
    """The boot loader configuration cannot be read or changed."""


def _tool_in_root(ctx: Context, name: str) -> bool:
    return any((ctx.root / d / name).exists() for d in ("usr/sbin", "sbin", "usr/bin", "bin"))


def uses_grubby(ctx: Context) -> bool:
    """True when the root's kernels are configured with grubby (it rewrites BLS entries)."""
    return _tool_in_root(ctx, "grubby")


def parse_cmdline_value(line_value: str, where: str) -> list[str]:
    """The words of a GRUB_CMDLINE_LINUX value, with shell quoting undone."""
    try:
        words = shlex.split(line_value, comments=True)
    except ValueError as err:
        raise BootLoaderError(f"{where}: cannot parse GRUB_CMDLINE_LINUX ({err}); "
                              "fix the line by hand") from None
    return " ".join(words).split()


def with_console(text: str, where: str) -> str:
    """/etc/default/grub text with the console arguments on GRUB_CMDLINE_LINUX."""
    return with_kernel_args(text, CONSOLE_ARGS, where)


def with_kernel_args(text: str, args: tuple[str, ...], where: str) -> str:
    """/etc/default/grub text with `args` on GRUB_CMDLINE_LINUX.

    The last assignment wins in a shell file, so that one is edited; a file without
    one gets a new line.
    """
    lines = text.splitlines(keepends=True)
    last = None
    for index, line in enumerate(lines):
        if _CMDLINE.match(line.rstrip("\n")):
            last = index
    if last is None:
        tail = "" if not text or text.endswith("\n") else "\n"
        return f"{text}{tail}GRUB_CMDLINE_LINUX=\"{' '.join(args)}\"\n"
    match = _CMDLINE.match(lines[last].rstrip("\n"))
    assert match is not None
    words = parse_cmdline_value(match.group(2), where)
    missing = [arg for arg in args if arg not in words]
    if not missing:
        return text
    # Values come from the file itself; double quotes keep `$VAR` references working.
    value = " ".join([*words, *missing]).replace("\\", "\\\\").replace('"', '\\"')
    lines[last] = f'{match.group(1)}GRUB_CMDLINE_LINUX="{value}"\n'
    return "".join(lines)


def grub_config(ctx: Context) -> tuple[str, tuple[str, ...]] | None:
    """The generated grub.cfg of the root and the command that regenerates it, if any."""
    for config, command in _GRUB_CONFIGS:
        if (ctx.root / config).exists():
            if command[0] == "grub-mkconfig" and _tool_in_root(ctx, "update-grub"):
                return config, ("update-grub",)  # Debian's wrapper, same output
            return config, command
    return None


def _has_args(text: str, args: tuple[str, ...]) -> bool:
    return all(re.search(rf"(^|\s){re.escape(arg)}(\s|$)", text) for arg in args)


def grub_problem(ctx: Context, args: tuple[str, ...] = CONSOLE_ARGS) -> str | None:
    """Probe: what keeps the GRUB setup from booting with `args`, or None."""
    try:
        text = ctx.root.follow(DEFAULT_GRUB).read_text()
    except FileNotFoundError:
        return f"{DEFAULT_GRUB} is missing"
    if with_kernel_args(text, args, DEFAULT_GRUB) != text:
        return f"GRUB_CMDLINE_LINUX in {DEFAULT_GRUB} lacks {' '.join(args)}"
    found = grub_config(ctx)
    if found is not None:
        config, _ = found
        linux_lines = [line for line in ctx.root.follow(config).read_text(errors="replace")
                       .splitlines() if line.strip().startswith("linux")]
        if linux_lines and not all(_has_args(line, args) for line in linux_lines):
            return f"{config} is older than {DEFAULT_GRUB}: not regenerated"
    return None


def grubby_problem(ctx: Context, args: tuple[str, ...] = CONSOLE_ARGS) -> str | None:
    """Probe: kernels whose grubby arguments lack `args`, or None."""
    if not runs_in_root(ctx):
        return "grubby can only be asked inside the image (chroot=y)"
    result = ctx.run.probe(["grubby", "--info=ALL"], check=True)
    args_lines = [line for line in result.stdout.splitlines() if line.startswith("args=")]
    lacking = [line for line in args_lines
               if not _has_args(line.partition("=")[2].strip('"'), args)]
    if lacking:
        return f"{len(lacking)} of {len(args_lines)} kernels lack {' '.join(args)}"
    return None


def set_grub_console(ctx: Context) -> None:
    """Edit /etc/default/grub, then regenerate grub.cfg with the distribution's command."""
    set_grub_args(ctx, CONSOLE_ARGS, "kernel console on ttyS0")


def set_grub_args(ctx: Context, args: tuple[str, ...], why: str) -> None:
    """Add `args` to GRUB_CMDLINE_LINUX, then regenerate grub.cfg (inside the root only)."""
    default = ctx.root / DEFAULT_GRUB
    try:
        text = ctx.root.follow(DEFAULT_GRUB).read_text()
    except FileNotFoundError:
        raise BootLoaderError(
            f"no boot loader configuration in {ctx.root.base}: neither grubby nor "
            f"{DEFAULT_GRUB} nor GRUB legacy's {' or '.join(LEGACY_GRUB)}; add "
            f"{' '.join(args)} to the kernel command line by hand") from None
    ctx.fs.write(default, with_kernel_args(text, args, DEFAULT_GRUB),
                 why=f"{why}: {' '.join(args)}")
    found = grub_config(ctx)
    if found is None:
        # No grub.cfg yet (GRUB not installed in this root): it is made from the edited file.
        return
    _, command = found
    if not runs_in_root(ctx):
        # The host's grub-mkconfig would write the host's /boot (DESIGN rule 8).
        ctx.run.record("skip", " ".join(command),
                       "regenerate grub.cfg inside the image: run with chroot=y")
        log.warning("%s edited; grub.cfg of image %s not regenerated: run again with "
                    "chroot=y, or it is regenerated when the image next updates its kernel",
                    DEFAULT_GRUB, ctx.root.base)
        return
    ctx.run.change(list(command), why=f"regenerate grub.cfg: {why}", timeout=600)


def runs_in_root(ctx: Context) -> bool:
    """True when the boot loader tools act on the root's own boot files: the running
    system, or an image entered with chroot=y. On an image without it they would change
    the host's."""
    return ctx.root.is_host or ctx.run.chroot


def set_grubby_console(ctx: Context) -> None:
    """grubby adds the arguments to every installed kernel."""
    set_grubby_args(ctx, CONSOLE_ARGS, "kernel console on ttyS0")


def set_grubby_args(ctx: Context, args: tuple[str, ...], why: str) -> None:
    """grubby adds `args` to every installed kernel (inside the root only)."""
    if not runs_in_root(ctx):
        raise BootLoaderError(f"{ctx.root.base} uses grubby, which edits the boot entries of "
                              "the system it runs on: run again with chroot=y")
    ctx.run.change(["grubby", "--update-kernel=ALL", f"--args={' '.join(args)}"], why=why)


def legacy_grub_config(ctx: Context) -> str | None:
    """GRUB legacy's configuration (menu.lst or grub.conf) when the root has no GRUB 2
    defaults file: the boot loader of the distributions whose kernels predate 2.6.37."""
    if ctx.root.follow(DEFAULT_GRUB).exists():
        return None
    return next((config for config in LEGACY_GRUB if ctx.root.follow(config).is_file()), None)


def with_legacy_args(text: str, args: tuple[str, ...]) -> str:
    """GRUB legacy text with `args` appended to every `kernel` line that lacks them."""
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        body = line.rstrip("\n")
        if body.strip().startswith("kernel") and len(body.split()) > 1:
            missing = [arg for arg in args if not _has_args(body, (arg,))]
            if missing:
                lines[index] = " ".join([body.rstrip(), *missing]) + line[len(body):]
    return "".join(lines)


def legacy_problem(ctx: Context, args: tuple[str, ...] = CONSOLE_ARGS) -> str | None:
    """Probe: GRUB legacy `kernel` lines that lack `args`, or None."""
    config = legacy_grub_config(ctx)
    if config is None:
        return "no GRUB legacy configuration"
    text = ctx.root.follow(config).read_text(errors="replace")
    if with_legacy_args(text, args) != text:
        return f"kernel lines of {config} lack {' '.join(args)}"
    return None


def set_legacy_args(ctx: Context, args: tuple[str, ...], why: str) -> None:
    """Append `args` to the `kernel` lines of GRUB legacy's configuration (read at boot:
    nothing to regenerate)."""
    config = legacy_grub_config(ctx)
    if config is None:
        raise BootLoaderError(f"no GRUB legacy configuration in {ctx.root.base}")
    text = ctx.root.follow(config).read_text(errors="replace")
    ctx.fs.write(ctx.root / config, with_legacy_args(text, args), why=f"{why}: {' '.join(args)}")


def boot_loader_task(ctx: Context, args: tuple[str, ...], why: str,
                     ) -> tuple[str, tuple[Callable[..., None], list[Any]],
                                Callable[[], str | None]]:
    """(doc, action, probe) that put `args` on the kernel command line with the root's
    boot loader tooling: grubby, GRUB legacy, else GRUB 2's /etc/default/grub."""
    shown = " ".join(args)
    if uses_grubby(ctx):
        return (f"{shown} on every kernel (grubby)", (set_grubby_args, [ctx, args, why]),
                lambda: grubby_problem(ctx, args))
    legacy = legacy_grub_config(ctx)
    if legacy is not None:
        return (f"{shown} on the kernel lines of {legacy} (GRUB legacy)",
                (set_legacy_args, [ctx, args, why]), lambda: legacy_problem(ctx, args))
    return (f"{shown} in {DEFAULT_GRUB}, grub.cfg regenerated",
            (set_grub_args, [ctx, args, why]), lambda: grub_problem(ctx, args))


def generate(ctx: Context) -> Iterator[TaskDict]:
    """serialconsole:kernel-cmdline, with grubby, GRUB legacy or GRUB 2, whichever the
    root uses."""
    doc, action, probe = boot_loader_task(ctx, CONSOLE_ARGS, "kernel console on ttyS0")
    yield {
        "name": "kernel-cmdline",
        "doc": doc,
        "actions": [action],
        "uptodate": [Probe("kernel-cmdline", probe)],
    }
