"""What a no-op boot must not do, and a command line that shows what it did.

bench/startup.py and bench/rerun.py measure the no-op boot; these checks keep its path
light in the sandbox (tests/integration) and in the VM (tests/e2e).
"""

from __future__ import annotations

# Modules a no-op boot must not import: the heavy libraries, what doit loads for features
# the agent turns off (graph/doit_private.py), what only changed or failed work needs, what a
# cached answer spares (the DHCP code for the WireServer endpoint, the XML parser for a
# goal state document already handled). Not a list of every module a boot happens to skip:
# a standard-library module that costs a few milliseconds belongs here only if it is one
# of those.
NOT_ON_THE_NO_OP_BOOT = (
    "networkx", "requests", "cryptography", "asn1crypto", "passlib", "yaml", "defusedxml",
    "xml.etree", "http.client", "email", "importlib.metadata", "multiprocessing",
    "configparser", "pdb", "pprint", "pickle", "dbm", "gettext", "queue",
    "wire.certs", "wire.transport", "wire.openssl", "wire.cms", "wire.x509",
    "wire.subdocuments", "wire.reports", "wire.extensions_config",
    "wire.dhcp", "wire.documents", "wire.xmldoc", "pyexpat", "tasks.deprovision", "tasks.serialconsole", "graph.plan", "graph.render",
    # the account database: read by the user and SSH actions, not by their checks
    "facts.users",
    # downloads (a handler's directory is found and ordered by wire.versions)
    "wire.artifacts", "wire.proxy")

# `python3 -c WATCHED_BOOT provision ...` runs `waagent provision` and prints, last, two
# lines: the modules it imported, then how many times it called fsync.
WATCHED_BOOT = """\
import os, sys
synced = []
os.fsync = lambda fd: synced.append(fd)
from graph.cli import main
try:
    main()
finally:
    print(" ".join(sorted(sys.modules)))
    print(len(synced))
"""


def check_watched_boot(stdout: str) -> None:
    """Fail when the boot WATCHED_BOOT ran imported a module it must not, or called fsync."""
    modules, count = stdout.splitlines()[-2:]
    fsyncs = int(count)
    assert not {name for name in modules.split() if name.startswith(NOT_ON_THE_NO_OP_BOOT)}
    # The run report is written without fsync (the state database: see the callers).
    assert fsyncs == 0
