"""`waagent facts`: the facts gathered now from the root, with secrets redacted."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from doit.cmd_base import Command

from graph.context import make_context
from graph.loader import command_line_vars


class Facts(Command):
    """Print the facts the tasks decide from (read-only: probes change nothing)."""

    name = "facts"
    doc_purpose = "print the gathered facts (VM, hardware, distribution, disks, OVF), redacted"
    doc_usage = "[SECTION...]"
    doc_description = None

    def execute(self, opt_values: Any, pos_args: Any) -> int:
        from facts.store import describe_all

        ctx = make_context(command_line_vars(), plan=True)
        image = ctx.var("media")
        found = describe_all(ctx.root, ctx.conf, Path(image) if image else None)
        if pos_args:
            unknown = [s for s in pos_args if s not in found]
            if unknown:
                sys.stderr.write(f"facts: no section {', '.join(unknown)} "
                                 f"(sections: {', '.join(found)})\n")
                return 2
            found = {s: found[s] for s in pos_args}
        sys.stdout.write(json.dumps(found, indent=2, sort_keys=True, default=str) + "\n")
        return 0
