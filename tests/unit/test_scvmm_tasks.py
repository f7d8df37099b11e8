"""SCVMM (DetectScvmmEnv=y): a fabric-built DVD carrying linuxosconfiguration.xml and
install makes tasks.inputs.mode "scvmm"; scvmm:install copies VMM's files off the DVD
(read without mounting) and runs the installer; no Azure provisioning task exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fabric import build_media, default_scenario
from graph.commands import absent_task_reason
from graph.context import Context, make_context
from tasks import (
    certificates,
    customdata,
    gather,
    hostname,
    inputs,
    kernel,
    report,
    scvmm,
    ssh,
    user,
)

INSTALL = "#!/bin/bash\necho \"$@\" > /tmp/scvmm-args\n"
VMM_CONF = "<LinuxOSConfiguration><ComputerName>vmm-vm</ComputerName></LinuxOSConfiguration>\n"


def vmm_dvd(tmp_path: Path, fmt: str = "iso", files: dict[str, str] | None = None) -> Path:
    scenario = default_scenario()
    scenario.dvd_files = files if files is not None else {
        "linuxosconfiguration.xml": VMM_CONF, "install": INSTALL}
    return build_media(scenario, tmp_path / f"vmm.{fmt}", fmt)  # type: ignore[arg-type]


def vmm_context(root: Path, media: Path, detect: str = "y", **variables: str) -> Context:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/waagent.conf").write_text(f"DetectScvmmEnv={detect}\n")
    return make_context({"root": str(root), "media": str(media), **variables})


AZURE_AREAS = (gather, hostname, user, certificates, ssh, customdata, report, kernel)


def names(ctx: Context, *modules: Any) -> list[str]:
    return [task["name"] for module in modules for task in module.generate(ctx)]


@pytest.mark.parametrize("fmt", ["iso", "udf"])
def test_vmm_dvd_means_scvmm_provisions_and_azure_stands_aside(
        sandbox: Path, tmp_path: Path, fmt: str) -> None:
    ctx = vmm_context(sandbox, vmm_dvd(tmp_path, fmt))
    assert inputs.mode(ctx) == "scvmm"
    assert names(ctx, scvmm) == ["install"]
    assert names(ctx, *AZURE_AREAS) == []
    assert "System Center VMM" in absent_task_reason(ctx, "user:account")


def test_without_detect_scvmm_env_provisioning_is_as_usual(sandbox: Path,
                                                           tmp_path: Path) -> None:
    ctx = vmm_context(sandbox, vmm_dvd(tmp_path), detect="n")
    assert inputs.mode(ctx) == "waagent"
    assert names(ctx, scvmm) == []
    assert "ovf" in names(ctx, gather)


def test_an_azure_dvd_is_not_vmms(sandbox: Path, tmp_path: Path) -> None:
    ctx = vmm_context(sandbox, vmm_dvd(tmp_path, files={}))
    assert inputs.mode(ctx) == "waagent"
    assert names(ctx, scvmm) == []


def test_install_copies_vmm_files_and_never_runs_them_against_a_sandbox(
        sandbox: Path, tmp_path: Path) -> None:
    """Without chroot=y, a root that is not the running system: the DVD's script would
    run on the host, so it is recorded as skipped (DESIGN rule 8)."""
    ctx = vmm_context(sandbox, vmm_dvd(tmp_path))
    (task,) = scvmm.generate(ctx)
    func, args = task["actions"][0]
    func(*args)
    copy = sandbox / "var/lib/waagent/scvmm"
    assert (copy / "install").read_text() == INSTALL
    assert (copy / "linuxosconfiguration.xml").read_text() == VMM_CONF
    assert (copy / "install").stat().st_mode & 0o777 == 0o700
    (skipped,) = [c for c in ctx.run.planned if c.kind == "skip"]
    assert skipped.target == (f"/bin/bash {copy}/install -p {copy}")
    assert not [c for c in ctx.run.planned if c.kind == "run"]


def test_install_in_chroot_plan_runs_it_inside_the_image(sandbox: Path,
                                                         tmp_path: Path) -> None:
    ctx = make_context({"root": str(sandbox), "media": str(vmm_dvd(tmp_path)),
                        "chroot": "y", "conf": str(write_conf(tmp_path))}, plan=True)
    (task,) = scvmm.generate(ctx)
    func, args = task["actions"][0]
    func(*args)
    runs = [c.target for c in ctx.run.planned if c.kind == "run"]
    assert runs == [f"chroot {sandbox} /bin/bash /var/lib/waagent/scvmm/install "
                    "-p /var/lib/waagent/scvmm"]


def write_conf(tmp_path: Path) -> Path:
    path = tmp_path / "waagent.conf"
    path.write_text("DetectScvmmEnv=y\n")
    return path


def test_a_vmm_dvd_without_install_is_a_clear_error(sandbox: Path, tmp_path: Path) -> None:
    from system.errors import ProbeFailed

    ctx = vmm_context(sandbox, vmm_dvd(tmp_path, files={"linuxosconfiguration.xml": VMM_CONF}))
    (task,) = scvmm.generate(ctx)
    func, args = task["actions"][0]
    with pytest.raises(ProbeFailed, match="holds linuxosconfiguration.xml but no install"):
        func(*args)


def test_the_whole_graph_loads_and_plans_with_a_vmm_dvd(sandbox: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """The extensions area waits for gather:extensions, which SCVMM mode does not gather:
    the graph must still load, list and plan."""
    from graph.cli import main

    media = vmm_dvd(tmp_path)
    vmm_context(sandbox, media)
    common = [f"root={sandbox}", f"media={media}"]
    assert main(["list", "--all", *common]) == 0
    listed = capsys.readouterr().out
    assert "scvmm:install" in listed and "gather:" not in listed
    assert main(["plan", "provision", *common]) == 0
    assert "RUN  scvmm:install" in capsys.readouterr().out
