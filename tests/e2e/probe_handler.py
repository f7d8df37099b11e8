"""A probe extension handler for the VM lab, built as a zip the fabric serves (scenario
`package: <zip>`): every command writes the environment it saw and reports success.

What each command leaves, under the handler's log folder (HandlerEnvironment.json's
logFolder, /var/log/azure/<Name>/):
- `env/<version>.<operation>`: the handler variables of the agent's environment, sorted
  (AZURE_GUEST_AGENT_*, ConfigSequenceNumber, ConfigExtensionName, VERSION);
- a line `<version> <operation> <seq>` in `operations.log`, and `<Name> <version>
  <operation>` in /var/log/azure/probe-order.log (shared by every probe: the order of
  commands across handlers);
then, unless `bodies[operation]` exits first, `status/<seq>.status` (success, `version` and
`code` as strings, as real handlers write them; the message names the operation, version
and sequence number), `mrseq`, and a line `<started> <ended> <version> <operation> <seq>`
(wall-clock seconds, the host's clock: the lab has no time namespace) in `timing.log`.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

ORDER_LOG = "var/log/azure/probe-order.log"
OPERATIONS = ("install", "uninstall", "update", "enable", "disable")

PROBE = r"""#!/bin/sh
started="$(date +%s.%N)"
op="$1"
here="$(cd "$(dirname "$0")/.." && pwd)"
logs="$(sed -n 's/.*"logFolder": *"\([^"]*\)".*/\1/p' "$here/HandlerEnvironment.json")"
logs="${logs:-/var/log/azure/__NAME__}"
ver="$AZURE_GUEST_AGENT_EXTENSION_VERSION"
seq="${ConfigSequenceNumber:-0}"
mkdir -p "$logs/env"
env | grep -E '^(AZURE_GUEST_AGENT_|ConfigSequenceNumber=|ConfigExtensionName=|VERSION=)' \
    | sort > "$logs/env/$ver.$op"
echo "$ver $op $seq" >> "$logs/operations.log"
echo "__NAME__ $ver $op" >> /var/log/azure/probe-order.log
__BODY__
mkdir -p "$here/status"
printf '[{"version":"1.0","timestampUTC":"%s","status":{"name":"__NAME__","operation":"%s","status":"success","code":"0","formattedMessage":{"lang":"en-US","message":"probe %s %s seq %s"}}}]' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$op" "$op" "$ver" "$seq" > "$here/status/$seq.status"
echo "$seq" > "$here/mrseq"
echo "$started $(date +%s.%N) $ver $op $seq" >> "$logs/timing.log"
exit 0
"""


def build_probe(zip_path: Path, name: str, *, bodies: dict[str, str] | None = None,
                **manifest_fields: object) -> Path:
    """The probe handler `name` as a zip at `zip_path`; `bodies[op]` is shell its command
    runs before it reports success (`exit 3`, `sleep 600`, a malformed status, ...)."""
    body = "\n".join(f'if [ "$op" = {op} ]; then\n{shell}\nfi'
                     for op, shell in (bodies or {}).items())
    script = PROBE.replace("__BODY__", body).replace("__NAME__", name)
    handler_manifest: dict[str, object] = {
        f"{op}Command": f"bin/probe.sh {op}" for op in OPERATIONS}
    handler_manifest.update({"reportHeartbeat": False, "updateMode": "UpdateWithInstall",
                             "continueOnUpdateFailure": False,
                             "supportsMultipleExtensions": False, **manifest_fields})
    manifest = [{"name": name.rsplit(".", 1)[-1], "version": 1.0,
                 "handlerManifest": handler_manifest}]
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, text, mode in (("HandlerManifest.json", json.dumps(manifest, indent=2), 0o644),
                                   ("bin/probe.sh", script, 0o755)):
            info = zipfile.ZipInfo(member, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, text)
    return zip_path


def probe_env(root: Path, name: str, version: str, operation: str) -> dict[str, str] | None:
    """The variables `operation` of `version` saw (None: it never ran)."""
    path = root / "var/log/azure" / name / "env" / f"{version}.{operation}"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    return dict(line.split("=", 1) for line in lines if "=" in line)


def operations(root: Path, name: str) -> list[str]:
    """`<version> <operation> <seq>` of every command the probe `name` ran, in order."""
    try:
        return (root / "var/log/azure" / name / "operations.log").read_text().splitlines()
    except FileNotFoundError:
        return []


def timings(root: Path, name: str) -> list[tuple[float, float, str, str, int]]:
    """(started, ended, version, operation, seq) of every command of `name` that reached
    its end, in order."""
    try:
        lines = (root / "var/log/azure" / name / "timing.log").read_text().splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        started, ended, version, operation, seq = line.split()
        found.append((float(started), float(ended), version, operation, int(seq)))
    return found


def order(root: Path) -> list[str]:
    """`<Name> <version> <operation>` of every probe command, across handlers, in order."""
    try:
        return (root / ORDER_LOG).read_text().splitlines()
    except FileNotFoundError:
        return []
