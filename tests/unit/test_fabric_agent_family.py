"""The fabric's guest agent family: GAFamilies with RSM properties, its manifest and the
agent packages in storage, changed through the control channel."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from fabric import Fabric, default_scenario
from fabric.documents import agent_package_url


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - the fabric on loopback
        return bytes(answer.read())


def test_default_family_offers_nothing_and_pins_nothing() -> None:
    with Fabric(default_scenario()) as fabric:
        config = fabric.goal_state.documents["extensionsconfig"]
        assert "<Name>Prod</Name>" in config and "IsVersionFromRSM" not in config
        manifest = get(f"{fabric.hostplugin_url}/storage/manifests/WALinuxAgent_Prod_manifest.xml")
        assert b"<Plugin>" not in manifest


def test_set_agent_family_publishes_versions_and_the_pin(tmp_path: Path) -> None:
    package = tmp_path / "agent.zip"
    package.write_bytes(b"PK\x05\x06" + bytes(18))
    with Fabric(default_scenario()) as fabric:
        before = fabric.incarnation
        answer = fabric.control({"action": "set-agent-family", "versions": [
            {"version": "9.1.0", "package": str(package)}], "version": "9.1.0",
            "is_version_from_rsm": True, "is_vm_enabled_for_rsm_upgrades": True})
        assert answer["ok"] and fabric.incarnation == before + 1
        config = fabric.goal_state.documents["extensionsconfig"]
        for tag in ("<Version>9.1.0</Version>", "<IsVersionFromRSM>true</IsVersionFromRSM>",
                    "<IsVMEnabledForRSMUpgrades>true</IsVMEnabledForRSMUpgrades>"):
            assert tag in config
        settings = json.loads(fabric.goal_state.vm_settings or b"{}")
        assert settings["gaFamilies"][0]["version"] == "9.1.0"
        manifest = get(f"{fabric.hostplugin_url}/storage/manifests/WALinuxAgent_Prod_manifest.xml")
        url = agent_package_url(fabric.urls, "9.1.0")
        assert b"<Version>9.1.0</Version>" in manifest and url.encode() in manifest
        assert get(url) == package.read_bytes()
        with pytest.raises(ValueError, match="agent family field"):
            fabric.set_agent_family(is_version_from_rsm="maybe")
