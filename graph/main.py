"""The agent's doit application: our loader, our commands, no stray doit.cfg."""

from __future__ import annotations  # noqa: I001 - graph.doit_private must precede doit

from typing import Any

from graph import doit_private  # first: doit without importlib.metadata, version checked
from doit.cmd_base import NamespaceTaskLoader
from doit.cmd_clean import Clean
from doit.cmd_forget import Forget
from doit.cmd_help import Help
from doit.cmd_ignore import Ignore
from doit.cmd_list import List
from doit.doit_cmd import DoitMain
from doit.plugin import PluginEntry

from graph import commands, loader


class WaagentLoader(NamespaceTaskLoader):
    """Builds the namespace from the task areas when doit asks for its config."""

    def load_doit_config(self) -> dict[str, Any]:
        self.namespace = loader.dodo_namespace()
        config: dict[str, Any] = super().load_doit_config()
        return config


class WaagentDoitMain(DoitMain):
    """doit with the agent's commands; reads no doit.cfg or pyproject.toml from the cwd."""

    BIN_NAME = "waagent"
    DOIT_CMDS = (Help, commands.Run, List, commands.Info, Clean, Forget, Ignore,
                 commands.ResetDep, commands.Strace)

    def __init__(self) -> None:
        doit_private.disable_entry_point_plugins()
        super().__init__(task_loader=WaagentLoader(), config_filenames=(),
                         extra_config=commands.PLUGINS)

    def get_cmds(self) -> Any:
        cmds = super().get_cmds()
        # Commands of later areas (plan, graph, facts, status) register here.
        for name, location in commands.extra_commands().items():
            cmds[name] = PluginEntry("COMMAND", name, location)
        return cmds


def run_doit(args: list[str]) -> int:
    """Run a doit command line (`list`, `provision root=...`) with the agent's engine."""
    # Some of doit's commands (forget, ignore) return None for success.
    return int(WaagentDoitMain().run(args) or 0)
