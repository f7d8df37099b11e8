"""The state a provisioning run leaves in a root, written directly, for deprovision tests.

The provisioning tasks write the same files; these tests must not depend on them, so
the state is laid down here: Lib.Dir with certificates, keys, the ovf-env copy and
custom data, leases, logs, histories, a machine id, cloud-init state, the agent's
firewall unit and a drop-in. Accounts are the caller's (useradd in a real root, or
hand-written passwd/shadow lines in a sandbox).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from system.fs import MARKER

USERNAME = "azureuser"
PASSWORD = "Correct-Horse-7f3a9"  # noqa: S105 - a test scenario's password
CUSTOM_DATA = "custom-data-5d1c2e8b: echo hello from the scenario"

OVF_ENV = """<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
             xmlns:wa="http://schemas.microsoft.com/windowsazure">
  <wa:ProvisioningSection>
    <wa:Version>1.0</wa:Version>
    <LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure">
      <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>
      <HostName>vm-scenario-1</HostName>
      <UserName>{username}</UserName>
      <DisableSshPasswordAuthentication>false</DisableSshPasswordAuthentication>
      <CustomData>{custom_data}</CustomData>
    </LinuxProvisioningConfigurationSet>
  </wa:ProvisioningSection>
</Environment>
"""


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def lay_down_provisioned_state(root: Path, *, username: str = USERNAME,
                               custom_data: str = CUSTOM_DATA, home: bool = True) -> None:
    """Write the files a provisioned VM has (accounts excepted) below `root`."""
    lib = root / "var/lib/waagent"
    lib.mkdir(parents=True, exist_ok=True)
    os.chmod(lib, 0o700)
    write(lib / "ovf-env.xml", OVF_ENV.format(username=username, custom_data=custom_data),
          0o600)
    write(lib / "CustomData", custom_data, 0o600)
    write(lib / "TransportCert.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n", 0o600)
    write(lib / "TransportPrivate.pem", "-----BEGIN PRIVATE KEY-----\nMIIE\n", 0o600)
    write(lib / "EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62.crt", "cert", 0o600)
    write(lib / "EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62.prv", "private key", 0o600)
    write(lib / "facts/ovf.json", json.dumps({"username": username}), 0o600)
    write(lib / "WireServerEndpoint", "168.63.129.16")
    write(lib / "Microsoft.Azure.Extensions.CustomScript-2.1.10/config/0.settings",
          '{"protectedSettings": "secret"}', 0o600)
    write(root / "var/lib/dhcp/dhclient.eth0.leases", "lease { fixed-address 10.0.0.4; }\n")
    write(root / "var/lib/NetworkManager/internal-1234-eth0.lease", "ADDRESS=10.0.0.4\n")
    write(root / "run/systemd/netif/leases/2", "ADDRESS=10.0.0.4\n")
    write(root / "var/log/waagent.log", f"provisioned {username}\n")
    write(root / "var/log/azure/Microsoft.Azure.Extensions.CustomScript/handler.log", "ran\n")
    write(root / "root/.bash_history", "passwd\n", 0o600)
    if home:
        write(root / f"home/{username}/.bash_history", "sudo -i\n", 0o600)
    write(root / "etc/hostname", "vm-scenario-1\n")
    write(root / "etc/machine-id", "0123456789abcdef0123456789abcdef\n", 0o444)
    write(root / "var/lib/systemd/random-seed", "seed", 0o600)
    write(root / "etc/sudoers.d/waagent", f"{username} ALL=(ALL) ALL\n", 0o440)
    # cloud-init installed, with an instance that saw the custom data.
    write(root / "usr/bin/cloud-init", "#!/bin/sh\n", 0o755)
    write(root / "var/lib/cloud/instances/iid-1/user-data.txt", custom_data)
    write(root / "var/lib/cloud/data/instance-id", "iid-1\n")
    if not (root / "var/lib/cloud/instance").is_symlink():
        os.symlink("/var/lib/cloud/instances/iid-1", root / "var/lib/cloud/instance")
    unit_dir = root / "etc/systemd/system"
    write(unit_dir / "waagent-network-setup.service", "[Service]\nExecStart=/bin/true\n")
    wants = unit_dir / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    if not (wants / "waagent-network-setup.service").is_symlink():
        os.symlink("/etc/systemd/system/waagent-network-setup.service",
                   wants / "waagent-network-setup.service")
    write(unit_dir / "walinuxagent.service.d/10-slice.conf", f"# {MARKER}\n[Service]\n")
