"""Extension packages the fabric serves: a directory zipped on the fly, a zip, or a no-op handler."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from fabric.scenario import Extension, Scenario

# Fixed timestamp so the same package gives the same zip bytes.
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)

NOOP_HANDLER = r"""#!/bin/sh
# The fabric's no-op extension handler: every operation succeeds and writes a status file.
op="${1:-enable}"
here="$(cd "$(dirname "$0")/.." && pwd)"
status_dir="$(sed -n 's/.*"statusFolder": *"\([^"]*\)".*/\1/p' "$here/HandlerEnvironment.json" 2>/dev/null)"
seq="${ConfigSequenceNumber:-0}"
if [ -n "$status_dir" ]; then
    mkdir -p "$status_dir"
    now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '[{"version":1.0,"timestampUTC":"%s","status":{"name":"%s","operation":"%s","status":"success","code":0,"formattedMessage":{"lang":"en-US","message":"fabric no-op handler: %s"}}}]\n' \
        "$now" "__NAME__" "$op" "$op" > "$status_dir/$seq.status"
fi
exit 0
"""


def _zip(files: dict[str, tuple[bytes, int]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            data, mode = files[name]
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return out.getvalue()


def noop_package(ext: Extension) -> bytes:
    """A handler whose commands all succeed: enough for the agent's extension workflow."""
    command = "bin/handler.sh"
    manifest = [
        {
            "name": ext.name.rsplit(".", 1)[-1],
            "version": 1.0,
            "handlerManifest": {
                "installCommand": f"{command} install",
                "uninstallCommand": f"{command} uninstall",
                "updateCommand": f"{command} update",
                "enableCommand": f"{command} enable",
                "disableCommand": f"{command} disable",
                "rebootAfterInstall": False,
                "reportHeartbeat": False,
                "updateMode": "UpdateWithInstall",
                "continueOnUpdateFailure": False,
                "supportsMultipleExtensions": False,
            },
        }
    ]
    files = {
        "HandlerManifest.json": (json.dumps(manifest, indent=2).encode(), 0o644),
        command: (NOOP_HANDLER.replace("__NAME__", ext.name).encode(), 0o755),
    }
    return _zip(files)


def directory_package(directory: Path) -> bytes:
    """A directory zipped with its files' modes kept (handlers need their exec bits)."""
    files: dict[str, tuple[bytes, int]] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            files[path.relative_to(directory).as_posix()] = (path.read_bytes(), path.stat().st_mode & 0o777)
    return _zip(files)


def package_bytes(scenario: Scenario, ext: Extension) -> bytes:
    """The zip the agent downloads for ext."""
    path = scenario.package_path(ext)
    if path is None:
        return noop_package(ext)
    if path.is_dir():
        return directory_package(path)
    return path.read_bytes()
