"""The agent's own package for self-update: what it holds, how it is built and checked.

A zip of the agent's Python packages as they are in a checkout (`conf/`, `facts/`,
`wire/`, `system/`, `tasks/`, `graph/` with their data files, `dodo.py`), plus
`agent.json`, `{"name": "waagent-graph", "version": "X"}`. Its `graph/version.py` says
the same version: the builder writes it in, and the installer (graph/update.py) checks
the manifest's version, `agent.json` and `graph/version.py` all agree before one byte
is unpacked. Installed, it is `<Lib.Dir>/waagent-graph-X/`, and the launcher
(graph/launcher.py) runs it with `PYTHONPATH` set to that directory; the interpreter
and the third-party libraries (doit, cryptography, ...) are the installed agent's.

`scripts/build_agent_package.py` builds one from a checkout with a given version.
"""

from __future__ import annotations

import ast
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from graph.version import AGENT_NAME
from system.errors import AgentError

MANIFEST_FILE = "agent.json"
VERSION_FILE = "graph/version.py"
PACKAGES = ("conf", "facts", "wire", "system", "tasks", "graph")
MODULES = ("dodo.py",)
# Fixed member time: the same tree and version give the same bytes.
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)
# ASCII digits (\d takes any script's), at most 9 each (int() refuses more than 4300), and
# \Z: "$" would take a newline at the end.
VERSION_PATTERN = re.compile(r"\A[0-9]{1,9}(\.[0-9]{1,9}){1,3}\Z")


class BadAgentPackage(AgentError):
    """A downloaded agent package that is not what the manifest offered."""


class PackageManifest(NamedTuple):
    name: str
    version: str


def build_package(source: Path, version: str, *,
                  overrides: Mapping[str, str | bytes] | None = None) -> bytes:
    """The agent package of the checkout at `source`, saying `version`; `overrides`
    replaces (or adds) members by name, as tests do to build a broken version."""
    if not VERSION_PATTERN.match(version):
        raise ValueError(f"agent version {version!r}: expected numbers and dots, e.g. 1.2.3")
    members: dict[str, bytes] = {}
    for package in PACKAGES:
        for path in sorted((source / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                members[path.relative_to(source).as_posix()] = path.read_bytes()
    for module in MODULES:
        if (source / module).is_file():
            members[module] = (source / module).read_bytes()
    members[VERSION_FILE] = _with_version(members[VERSION_FILE].decode(), version).encode()
    members[MANIFEST_FILE] = (json.dumps({"name": AGENT_NAME, "version": version},
                                         indent=2) + "\n").encode()
    for name, data in (overrides or {}).items():
        members[name] = data.encode() if isinstance(data, str) else data
    import zipfile  # here, as in verify_package

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = (0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, members[name])
    return out.getvalue()


def _with_version(text: str, version: str) -> str:
    changed, count = re.subn(r'^AGENT_VERSION = "[^"]*"$', f'AGENT_VERSION = "{version}"',
                             text, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f"{VERSION_FILE} has no single AGENT_VERSION line to rewrite")
    return changed


def declared_version(source: str) -> tuple[str | None, str | None]:
    """AGENT_NAME and AGENT_VERSION as a version.py states them (read, never run)."""
    found: dict[str, str | None] = {"AGENT_NAME": None, "AGENT_VERSION": None}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name) and node.targets[0].id in found and \
                isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found[node.targets[0].id] = node.value.value
    return found["AGENT_NAME"], found["AGENT_VERSION"]


def parse_manifest(text: str | bytes, where: str) -> PackageManifest:
    """`agent.json`: BadAgentPackage unless it names an agent and a version."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadAgentPackage(f"{where}: {MANIFEST_FILE} is not JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or \
            not isinstance(data.get("version"), str):
        raise BadAgentPackage(f"{where}: {MANIFEST_FILE} must be "
                              '{"name": "...", "version": "..."}')
    return PackageManifest(data["name"], data["version"])


def verify_package(data: bytes, version: str, *, where: str) -> PackageManifest:
    """Check a downloaded package says `version` everywhere before it is unpacked:
    BadAgentPackage naming what disagrees. (system.unpack checks the archive itself.)"""
    # Imported when a package comes, not by the daemon that imports this module at start
    # (graph/update.py) and would hold zipfile for its whole life.
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            missing = [n for n in (MANIFEST_FILE, VERSION_FILE, "graph/cli.py") if n not in names]
            if missing:
                raise BadAgentPackage(f"{where}: not an agent package: no {', '.join(missing)}")
            manifest = parse_manifest(archive.read(MANIFEST_FILE), where)
            name, own = declared_version(archive.read(VERSION_FILE).decode())
    except (zipfile.BadZipFile, ValueError, SyntaxError, UnicodeDecodeError) as err:
        raise BadAgentPackage(f"{where}: unreadable agent package ({err})") from None
    if manifest.name != AGENT_NAME or name != AGENT_NAME:
        raise BadAgentPackage(f"{where}: a package of {manifest.name!r} ({VERSION_FILE}: "
                              f"{name!r}), not of {AGENT_NAME}")
    if manifest.version != version or own != version:
        raise BadAgentPackage(f"{where}: the manifest offered version {version}, the package "
                              f"says {manifest.version} ({MANIFEST_FILE}) and {own} "
                              f"({VERSION_FILE})")
    return manifest
