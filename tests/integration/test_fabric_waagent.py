"""Conformance: the published Azure Linux agent (Debian package waagent 2.7.3) against the fabric.

The agent runs as a library under the system python3 (tests/data/fabric/waagent_driver.py),
its Lib.Dir in a temporary directory. The package is used where it is installed, or
fetched with `apt-get download` and unpacked with `dpkg -x` into a temporary
directory: nothing of the host changes either way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fabric import Fabric, default_scenario
from fabric.keys import thumbprint

DRIVER = Path(__file__).resolve().parent.parent / "data" / "fabric" / "waagent_driver.py"
SYSTEM_PYTHON = "/usr/bin/python3"
INSTALLED = Path("/usr/lib/python3/dist-packages")


@pytest.fixture(scope="module")
def agent_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dist-packages directory holding azurelinuxagent (installed, or unpacked from the .deb)."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"missing {SYSTEM_PYTHON}: the published agent runs on the system python")
    deps = subprocess.run([SYSTEM_PYTHON, "-c", "import distro, pkg_resources"], capture_output=True, timeout=60)
    if deps.returncode != 0:
        pytest.skip("the agent's dependencies are missing: apt-get install python3-distro python3-pkg-resources")
    if (INSTALLED / "azurelinuxagent" / "common" / "protocol" / "wire.py").exists():
        return INSTALLED
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            pytest.skip(f"missing tool {tool} to fetch the waagent package")
    work = tmp_path_factory.mktemp("waagent")
    download = subprocess.run(["apt-get", "download", "waagent"], cwd=work, capture_output=True, text=True, timeout=300)
    debs = sorted(work.glob("waagent_*.deb"))
    if download.returncode != 0 or not debs:
        pytest.skip(f"cannot fetch the waagent package (apt-get update first?): {download.stderr.strip()[-300:]}")
    subprocess.run(["dpkg", "-x", str(debs[0]), str(work / "root")], check=True, capture_output=True, timeout=120)
    path = work / "root" / "usr" / "lib" / "python3" / "dist-packages"
    assert (path / "azurelinuxagent").is_dir()
    return path


def run_agent(fabric: Fabric, agent: Path, lib_dir: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # the agent would honour a proxy
    done = subprocess.run(
        [SYSTEM_PYTHON, str(DRIVER), str(agent), str(lib_dir), str(fabric.ports["wire"]), str(fabric.ports["hostplugin"])],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_published_agent_provisions_against_the_fabric(agent_path: Path, tmp_path: Path) -> None:
    scenario = default_scenario()
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    with Fabric(scenario) as fabric:
        # The first HostGAPlugin upload fails with a code the agent does not retry: it falls back to direct.
        fabric.inject("status", 400)
        result = run_agent(fabric, agent_path, lib_dir)
        record = fabric.record

        # Version negotiation, goal state and every sub-document.
        routes = [r["route"] for r in record.requests()]
        for route in ("versions", "goalstate", "hostingenv", "sharedconfig", "extensionsconfig", "certificates",
                      "vmsettings", "hgap.versions", "artifact"):
            assert route in routes, route
        assert "unknown" not in routes
        assert all(r["status"] in (200, 202, 201, 304) for r in record.requests() if r["route"] != "status")

        # Certificates decrypted by the agent to <THUMBPRINT>.crt/.prv.
        thumbprints = scenario.thumbprints()
        assert result["certs"] == sorted(thumbprints)
        files = set(result["files"])  # type: ignore[arg-type]
        for thumb in thumbprints:
            assert f"{thumb}.crt" in files
        for index in range(len(scenario.key_pairs)):
            assert f"{thumbprint(scenario.key_pair_certificate(index))}.prv" in files
        assert record.certificates()[0]["cipher"] == "DES_EDE3_CBC"

        # The documents as the agent understood them.
        assert result["vm_name"] == scenario.hostname
        assert result["role_instance"] == scenario.instance_id
        assert result["incarnation"] == str(scenario.incarnation)
        extension = result["extensions"][0]  # type: ignore[index]
        assert (extension["name"], extension["version"], extension["state"]) == ("Fabric.Demo.NoOp", "1.0.0", "enabled")
        assert extension["settings"][0]["public"] == {"greeting": "hello"}
        assert extension["settings"][0]["thumbprint"] in thumbprints
        assert result["extensions_source"] == "FastTrack"  # vmSettings agreed with ExtensionsConfig
        assert all(p["direct"] and p["host"] and p["same"] for p in result["packages"])  # type: ignore[union-attr, index, attr-defined]

        # Reports: NotReady/Provisioning then Ready, role properties, the status blob both ways.
        assert [(h["state"], h["substatus"]) for h in record.health_reports()] == [
            ("NotReady", "Provisioning"), ("Ready", None)]
        assert record.health_reports()[-1]["container_id"] == scenario.container_id
        assert record.role_properties()[0]["properties"]["CertificateThumbprint"] == "0123456789ABCDEF0123456789ABCDEF01234567"
        blobs = record.status_blobs()
        assert [b["via"] for b in blobs] == ["direct", "hostplugin"]
        assert all(b["status"]["aggregateStatus"]["guestAgentStatus"]["status"] == "Ready" for b in blobs)
