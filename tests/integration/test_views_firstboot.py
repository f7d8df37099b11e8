"""The plan and `waagent facts` before the first boot: a sandbox VM that was never
provisioned, its media and the fabric on 127.0.0.1. The plan reads the OVF and the goal
state (GET only) into memory and says what each provisioning task would do; it writes
nothing and sends the platform nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric import Fabric, default_scenario, keys
from tests.integration.provisioning import BASE_CONF, WAAGENT, Harness
from tests.unit.test_views_support import tree_digest

CONF = BASE_CONF + "Provisioning.ExecuteCustomData=y\nProvisioning.DecodeCustomData=n\n"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with Fabric(default_scenario()) as fabric:
        yield Harness(tmp_path, fabric, CONF)


def fingerprint(public_key: str) -> str:
    """`ssh-keygen -lf`'s SHA256:... of an OpenSSH public key line."""
    blob = base64.b64decode(public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def planned(harness: Harness) -> tuple[str, dict[str, dict[str, Any]]]:
    """(the plan as text, the plan as JSON by task), checking that looking changed nothing
    and that the platform only answered GETs."""
    before = tree_digest(harness.root)
    text = harness.run(command="plan")
    as_json = harness.run("--json", command="plan")
    assert tree_digest(harness.root) == before, "a plan writes nothing"
    methods = {request["method"] for request in harness.fabric.record.requests()}
    assert methods == {"GET"}, harness.fabric.record.requests()
    assert not harness.fabric.record.health_reports()
    assert not harness.fabric.record.role_properties()
    tasks = {task["name"]: task for task in json.loads(as_json.stdout)["tasks"]}
    return text.stdout + text.stderr, tasks


def changes(task: dict[str, Any]) -> str:
    return "\n".join(f"{c['kind']} {c['target']}  ({c['why']})" for c in task["changes"])


def test_the_first_boot_plan_says_what_each_task_would_do(harness: Harness) -> None:
    scenario = harness.scenario

    ssh_key_thumb = keys.thumbprint(scenario.ssh_key_certificate(1)).upper()
    key_pair_thumb = keys.thumbprint(scenario.key_pair_certificate(0)).upper()

    text, tasks = planned(harness)
    assert "cannot check" not in text and "no provisioning data" not in text, text
    assert "MAY " not in text, text
    provisioning = [name for name in tasks if name.split(":")[0] in
                    ("hostname", "user", "ssh", "customdata", "certificates", "report")]
    for name in provisioning:
        assert tasks[name]["outcome"] == "run", (name, tasks[name])
    vm = scenario.vm_id
    assert any(f"not done yet for VM id {vm}" in r for r in tasks["user:account"]["reasons"])

    assert f"hostname localhost -> {scenario.hostname}" in changes(tasks["hostname:set"])
    account = changes(tasks["user:account"])
    assert "useradd" in account and f"create user {scenario.username}" in account
    assert "groups: its own only" in account, account  # Debian: sudo rights by sudoers
    password = changes(tasks["user:password"])
    assert "password" in password and scenario.password not in text
    assert f"{scenario.username} ALL=(ALL) ALL" in changes(tasks["user:sudoers"])
    authorized = changes(tasks["ssh:authorized_keys"])
    assert fingerprint(scenario.ssh_public_key(0)) in authorized, authorized
    assert ssh_key_thumb in authorized, authorized
    pairs = changes(tasks["ssh:keypairs"])
    assert key_pair_thumb in pairs, pairs
    assert "PasswordAuthentication yes" in changes(tasks["ssh:config"])
    # Fetched by whichever task comes first: ssh:certificates (the OVF names some) or
    # certificates:install.
    certificates = changes(tasks["ssh:certificates"]) + changes(tasks["certificates:install"])
    for thumbprint in (ssh_key_thumb,
                       key_pair_thumb):
        assert thumbprint in certificates, certificates
    # As the OVF holds it (base64), saved as given with DecodeCustomData=n.
    assert re.search(r"custom data, \d+ bytes, saved as given", changes(tasks["customdata:save"]))
    assert "custom data" in changes(tasks["customdata:run"])
    assert "echo" not in text, "the custom data's content stays out of the plan"
    assert "health Ready" in changes(tasks["report:ready"])


def test_facts_show_the_ovf_of_the_media_redacted(harness: Harness) -> None:
    scenario = harness.scenario
    before = tree_digest(harness.root)
    result = harness.run("ovf", command="facts")
    assert tree_digest(harness.root) == before
    assert result.returncode == 0, result.stderr
    assert scenario.password not in result.stdout and "echo" not in result.stdout
    ovf = json.loads(result.stdout)["ovf"]
    assert ovf["source"] == f"image:{harness.media}"
    media = ovf["media"]
    assert media["username"] == scenario.username and media["hostname"] == scenario.hostname
    assert media["password"] == "<redacted>" and media["password_set"] is True
    assert media["custom_data"] == "<redacted>" and media["custom_data_bytes"] > 0, media


def test_facts_without_media_say_where_they_looked(harness: Harness) -> None:
    (harness.root / "dev").mkdir(exist_ok=True)
    (harness.root / "dev/sr0").write_bytes(b"\0" * 4096)  # a drive without a disc
    out = subprocess.run([WAAGENT, "facts", "ovf", f"root={harness.root}",
                          f"conf={harness.conf}"], capture_output=True, text=True, check=False)
    ovf = json.loads(out.stdout)["ovf"]
    assert ovf["media"] is None
    assert ovf["looked_at"] == ["/dev/sr0"], ovf
    assert "no provisioning media: looked for sr0" in ovf["note"], ovf
    assert "no disc in /dev/sr0" in ovf["note"], ovf
