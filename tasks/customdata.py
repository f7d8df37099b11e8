"""Custom data: saved (0600), decoded when asked, run when asked.

customdata:save  <Lib.Dir>/CustomData (base64-decoded with Provisioning.DecodeCustomData)
customdata:run   executed once per VM with Provisioning.ExecuteCustomData
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from graph.context import Context
from system.errors import AgentError, CommandFailed
from system.redact import register_secret
from tasks import TaskDict, inputs
from tasks.once import once

log = logging.getLogger("waagent.customdata")

CUSTOM_DATA_FILE = "CustomData"
RUN_TIMEOUT = 900.0


class CustomDataError(AgentError):
    """Custom data cannot be saved or its script failed."""


def generate(ctx: Context) -> Iterator[TaskDict]:
    """Custom data tasks, only when this agent provisions."""
    if inputs.mode(ctx) != "waagent":
        return
    conf = ctx.conf
    # Once per VM (tasks/once.py): the saved copy is not restored after someone removes it,
    # and the script runs at most once, even if the agent dies while it runs.
    yield once(ctx, "customdata", {
        "name": "save",
        "doc": "save custom data to <Lib.Dir>/CustomData (0600)",
        "actions": [(save_custom_data, [ctx])],
        "task_dep": ["gather:ovf"],
    }, lambda: {"vm_id": inputs.vm_id(ctx),
                "sha256": inputs.ovf_facts(ctx).get("custom_data_sha256"),
                **conf.subset(["Provisioning.DecodeCustomData", "Lib.Dir"])})
    if conf.flag("Provisioning.ExecuteCustomData"):
        yield once(ctx, "customdata", {
            "name": "run",
            "doc": "run custom data as a script (Provisioning.ExecuteCustomData=y)",
            "actions": [(run_custom_data, [ctx])],
            "task_dep": ["customdata:save", "user:*", "ssh:config", "hostname:set"],
        }, lambda: {"vm_id": inputs.vm_id(ctx),
                    "sha256": inputs.ovf_facts(ctx).get("custom_data_sha256")},
            record_first=True)


def save_custom_data(ctx: Context) -> None:
    """Write the custom data, decoded when DecodeCustomData is set."""
    data = inputs.provisioning_data(ctx)
    raw = data.env.custom_data if data is not None else None
    if raw is None:
        return
    content: bytes = raw.encode()
    how = "saved as given"
    if ctx.conf.flag("Provisioning.DecodeCustomData"):
        how = f"base64-decoded from {len(content)} bytes"
        import base64  # only here: the boot's up-to-date checks should not pay for it
        import binascii

        try:
            content = base64.b64decode(raw, validate=False)
        except (binascii.Error, ValueError) as err:
            raise CustomDataError(f"CustomData in ovf-env.xml is not base64 "
                                  f"(Provisioning.DecodeCustomData=y): {err}") from None
    # Decoded, it is a script or cloud-config that may hold secrets of its own.
    register_secret(content.decode("utf-8", "replace").strip())
    ctx.fs.write(ctx.lib_dir / CUSTOM_DATA_FILE, content, mode=0o600, secret=True,
                 why=f"custom data, {len(content)} bytes, {how}")


def run_custom_data(ctx: Context) -> None:
    """Run the custom data inside the VM (never on the host of a sandbox root)."""
    path = ctx.lib_dir / CUSTOM_DATA_FILE
    # A plan saved nothing: it goes by the OVF, which says whether there is custom data.
    planned = ctx.run.plan and not path.exists() and bool(
        inputs.ovf_facts(ctx).get("custom_data_sha256"))
    if not path.exists() and not planned:
        return
    if planned and (ctx.root.is_host or ctx.run.chroot):
        ctx.run.record("run", ctx.root.system_path(path), "run custom data as a script, "
                       "once for this VM")
        return
    if not (ctx.root.is_host or ctx.run.chroot):
        ctx.run.record("skip", ctx.root.system_path(path),
                       "custom data runs only on the VM itself or in its chroot")
        log.info("skipped: running custom data (root %s is not the running system)",
                 ctx.root.base)
        return
    ctx.fs.chmod(path, 0o700, why="custom data is a script")
    try:
        result = ctx.run.change([ctx.command_path(path)], why="run custom data",
                                timeout=RUN_TIMEOUT, check=False)
    except CommandFailed as err:
        raise CustomDataError(f"custom data script did not finish: {err}") from None
    # The output may echo secrets (`set -x`): DEBUG only, the exit status at INFO.
    log.info("custom data script exited with status %s", result.returncode)
    for line in (result.stdout + result.stderr).splitlines()[-50:]:
        log.debug("custom data: %s", line)
    if not result.ok:
        raise CustomDataError(f"custom data script exited with status {result.returncode}; "
                              "its output is in the agent's log at DEBUG (Logs.Verbose=y)")
