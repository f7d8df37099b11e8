"""The secrets audit finds what is planted where it must not be (tests/support/secrets_audit.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fabric import default_scenario
from tests.support import secrets_audit
from tests.support.secrets_audit import AuditResult, ProcSampler


def test_a_clean_root_has_no_finding_and_each_leak_is_named(tmp_path: Path) -> None:
    scenario = default_scenario()
    root = tmp_path / "vm"
    lib = root / "var/lib/waagent"
    lib.mkdir(parents=True)
    (root / "etc/ssh").mkdir(parents=True)
    (root / "var/log").mkdir(parents=True)
    key = scenario.key_pair_private_key_pem(0)
    (lib / "ABC.prv").write_text(key)
    (lib / "ABC.prv").chmod(0o600)
    (lib / "CustomData").write_text(scenario.custom_data or "")
    (lib / "CustomData").chmod(0o600)
    (root / "var/log/waagent.log").write_text("INFO all fine\n")
    clean = secrets_audit.audit(root, scenario)
    assert clean.findings == [] and clean.locations >= 3

    (root / "var/log/waagent.log").write_text(f"DEBUG password {scenario.password}\n")
    (lib / "ABC.prv").chmod(0o644)
    (lib / "facts.json").write_text(key)
    (root / "core").write_bytes(b"\0")
    found = secrets_audit.audit(root, scenario, texts={"agent stderr": "s3cret"})
    assert sorted(found.findings) == sorted([
        "password in var/log/waagent.log",
        "var/lib/waagent/ABC.prv holds ABC.prv with mode 0644 (want 0600)",
        "ABC.prv in var/lib/waagent/facts.json",
        "key pair demo-key-pair in var/lib/waagent/facts.json",
        "a core file: core",
        "protected setting Fabric.Demo.NoOp.secret in agent stderr",
    ])


def test_the_sampler_reads_the_command_line_and_environment_of_children() -> None:
    scenario = default_scenario()
    env = dict(os.environ, LEAK=scenario.password or "")
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run("
                              "['sleep', '1'])"], env=env)
    result = AuditResult()
    with ProcSampler(child.pid) as sampler:
        child.wait(10)
    sampler.search(secrets_audit.planted(scenario, Path("/nonexistent")), result)
    assert result.checked["processes"] >= 2
    assert any(f.startswith("password in /proc/") for f in result.findings)
