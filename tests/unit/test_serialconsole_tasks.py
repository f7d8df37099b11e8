"""tasks/serialconsole.py: the GRUB_CMDLINE_LINUX edit, the probes, grubby, plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from graph.context import Context, make_context
from tasks import serialconsole
from tasks.serialconsole import BootLoaderError, with_console

CONSOLE = "console=ttyS0 earlyprintk=ttyS0"


@pytest.mark.parametrize(("before", "after"), [
    ('GRUB_CMDLINE_LINUX=""\n', f'GRUB_CMDLINE_LINUX="{CONSOLE}"\n'),
    ('GRUB_CMDLINE_LINUX="quiet splash"\n', f'GRUB_CMDLINE_LINUX="quiet splash {CONSOLE}"\n'),
    ("GRUB_CMDLINE_LINUX='rootdelay=300'\n", f'GRUB_CMDLINE_LINUX="rootdelay=300 {CONSOLE}"\n'),
    ("GRUB_CMDLINE_LINUX=net.ifnames=0\n", f'GRUB_CMDLINE_LINUX="net.ifnames=0 {CONSOLE}"\n'),
    ('GRUB_CMDLINE_LINUX="console=tty1 console=ttyS0"\n',
     'GRUB_CMDLINE_LINUX="console=tty1 console=ttyS0 earlyprintk=ttyS0"\n'),
    ('  GRUB_CMDLINE_LINUX="a"  # comment\n', f'  GRUB_CMDLINE_LINUX="a {CONSOLE}"\n'),
    ("GRUB_DEFAULT=0", f'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="{CONSOLE}"\n'),
])
def test_console_added_once(before: str, after: str) -> None:
    assert with_console(before, "grub") == after
    assert with_console(after, "grub") == after


def test_only_the_last_assignment_is_edited_and_other_lines_kept() -> None:
    text = ('GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="a"\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
            'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX b"\n')
    assert with_console(text, "grub") == (
        'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="a"\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
        f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX b {CONSOLE}"\n')


def test_unparsable_line_is_refused_with_where() -> None:
    with pytest.raises(BootLoaderError, match="/etc/default/grub: cannot parse"):
        with_console('GRUB_CMDLINE_LINUX="unbalanced\n', "/etc/default/grub")


def grub_root(root: Path, cmdline: str = "quiet", *, grub_cfg: str | None = None,
              update_grub: bool = True) -> Path:
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/grub").write_text(f'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="{cmdline}"\n')
    if grub_cfg is not None:
        (root / "boot/grub").mkdir(parents=True)
        (root / "boot/grub/grub.cfg").write_text(grub_cfg)
    if update_grub:
        (root / "usr/sbin").mkdir(parents=True)
        (root / "usr/sbin/update-grub").write_text("#!/bin/sh\n")
    return root


def plan(root: Path, **variables: str) -> Context:
    return make_context({"root": str(root), **variables}, plan=True)


def run_task(ctx: Context) -> dict[str, object]:
    (task,) = serialconsole.generate(ctx)
    assert task["name"] == "kernel-cmdline"
    return task


def test_grub_plan_edits_the_file_then_runs_update_grub_in_the_chroot(sandbox: Path) -> None:
    root = grub_root(sandbox, grub_cfg="linux /vmlinuz root=/dev/sda1 ro quiet\n")
    ctx = plan(root, chroot="y")
    (task,) = serialconsole.generate(ctx)
    assert serialconsole.grub_problem(ctx) is not None
    func, args = task["actions"][0]
    func(*args)
    planned = [str(change) for change in ctx.run.planned]
    assert planned[0].startswith("write /etc/default/grub")
    assert planned[1].startswith(f"run chroot {root} update-grub")
    assert "quiet\"" in (root / "etc/default/grub").read_text(), "plan mode wrote the file"


def test_grub2_config_gets_grub2_mkconfig(sandbox: Path) -> None:
    root = grub_root(sandbox, update_grub=False)
    (root / "boot/grub2").mkdir(parents=True)
    (root / "boot/grub2/grub.cfg").write_text("linux /vmlinuz ro\n")
    ctx = plan(root, chroot="y")
    assert serialconsole.grub_config(ctx) == ("/boot/grub2/grub.cfg",
                                              ("grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"))


def test_probe_sees_a_grub_cfg_not_regenerated(sandbox: Path) -> None:
    root = grub_root(sandbox, f"quiet {CONSOLE}",
                     grub_cfg="menuentry x {\n  linux /vmlinuz ro quiet\n}\n")
    ctx = plan(root)
    assert "not regenerated" in (serialconsole.grub_problem(ctx) or "")
    (root / "boot/grub/grub.cfg").write_text(f"  linux /vmlinuz ro quiet {CONSOLE}\n")
    assert serialconsole.grub_problem(ctx) is None


def test_real_run_on_a_root_without_grub_cfg_edits_only_the_file(sandbox: Path) -> None:
    root = grub_root(sandbox, "rootdelay=300", update_grub=False)
    ctx = make_context({"root": str(root)})
    serialconsole.set_grub_console(ctx)
    assert f'GRUB_CMDLINE_LINUX="rootdelay=300 {CONSOLE}"' in \
        (root / "etc/default/grub").read_text()
    assert serialconsole.grub_problem(ctx) is None
    assert not [c for c in ctx.run.planned if c.kind == "run"]


def test_no_boot_loader_is_a_clear_error(sandbox: Path) -> None:
    ctx = make_context({"root": str(sandbox)})
    assert serialconsole.grub_problem(ctx) == "/etc/default/grub is missing"
    with pytest.raises(BootLoaderError, match="add console=ttyS0 earlyprintk=ttyS0 .* by hand"):
        serialconsole.set_grub_console(ctx)


def fake_grubby(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    """A `grubby` on PATH that lists kernels with these arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    listing = "".join(f'index={i}\nkernel="/boot/vmlinuz-{i}"\nargs="{a}"\n'
                      for i, a in enumerate(args))
    script = bin_dir / "grubby"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{listing}EOF\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_grubby_never_runs_on_an_image_root_without_chroot(
        sandbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's grubby would read and edit the host's boot entries (DESIGN rule 8)."""
    (sandbox / "usr/sbin").mkdir(parents=True)
    (sandbox / "usr/sbin/grubby").write_text("#!/bin/sh\n")
    fake_grubby(tmp_path, monkeypatch, ["ro crashkernel=auto"])
    ctx = plan(sandbox)
    assert serialconsole.grubby_problem(ctx) == \
        "grubby can only be asked inside the image (chroot=y)"
    with pytest.raises(BootLoaderError, match="run again with chroot=y"):
        serialconsole.set_grubby_console(ctx)
    assert ctx.run.planned == []


def test_grubby_where_it_is_the_tool(sandbox: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (sandbox / "usr/sbin").mkdir(parents=True)
    (sandbox / "usr/sbin/grubby").write_text("#!/bin/sh\n")
    fake_grubby(tmp_path, monkeypatch, ["ro crashkernel=auto", f"ro {CONSOLE}"])
    # As on the running system (or in the image's chroot), where grubby may run.
    monkeypatch.setattr(serialconsole, "runs_in_root", lambda ctx: True)
    ctx = plan(sandbox)
    task = run_task(ctx)
    assert "grubby" in str(task["doc"])
    assert serialconsole.grubby_problem(ctx) == f"1 of 2 kernels lack {CONSOLE}"
    serialconsole.set_grubby_console(ctx)
    assert str(ctx.run.planned[-1]).startswith(
        f"run grubby --update-kernel=ALL '--args={CONSOLE}'")


def test_grubby_probe_content_when_every_kernel_has_it(sandbox: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake_grubby(tmp_path, monkeypatch, [f"ro {CONSOLE}", f"{CONSOLE} quiet"])
    monkeypatch.setattr(serialconsole, "runs_in_root", lambda ctx: True)
    assert serialconsole.grubby_problem(plan(sandbox)) is None
