"""A minimal VM root for tests and the demo: the files provisioning reads and writes.

Real tools (useradd --prefix, chpasswd -R, ssh-keygen, visudo) work on it; services
and the kernel are the host's, so the agent skips "live" actions on it. For a full
Debian file system see tests/support/debian_root.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SSHD_CONFIG = """\
# Debian's layout: drop-ins are included first, and the first value wins.
Include /etc/ssh/sshd_config.d/*.conf
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""

OS_RELEASE = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
ID=debian
"""


def product_uuid_for(vm_id: str) -> str:
    """DMI's product_uuid for a platform vmId (the first three groups are byte-swapped)."""
    groups = vm_id.lower().split("-")
    for index in range(3):
        groups[index] = bytes.fromhex(groups[index])[::-1].hex()
    return "-".join(groups)


def make_sandbox_root(root: Path, vm_id: str, *, sshd_config: str = SSHD_CONFIG) -> Path:
    """Create (or refresh) a minimal Debian-like root at `root` for VM `vm_id`."""
    etc = root / "etc"
    for directory in ("etc/ssh/sshd_config.d", "etc/sudoers.d", "etc/dhcp", "home", "root",
                      "var/log", "var/lib", "run", "tmp", "sys/class/dmi/id", "proc/net", "proc/self",
                      # No VMBus and no NICs: "none", not "unknown" (with a VMBus the
                      # disk tasks would wait for a late resource disk).
                      "sys/bus", "sys/block", "sys/class/net"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n"
                      "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
        "etc/shadow": "root:$6$seed$unusableunusable:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
        "etc/group": "root:x:0:\ndaemon:x:1:\nsudo:x:27:\nusers:x:100:\n",
        "etc/gshadow": "root:*::\ndaemon:*::\nsudo:*::\nusers:*::\n",
        "etc/hostname": "localhost\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n",
        "etc/os-release": OS_RELEASE,
        "etc/ssh/sshd_config": sshd_config,
        "etc/dhcp/dhclient.conf": "request subnet-mask, routers;\n",
        "sys/class/dmi/id/product_uuid": product_uuid_for(vm_id) + "\n",
        "proc/net/route": "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n",
        "proc/swaps": "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
        "proc/self/mountinfo": "",
    }
    for name, text in files.items():
        path = root / name
        if not path.exists():
            path.write_text(text)
    (etc / "shadow").chmod(0o640)
    (etc / "gshadow").chmod(0o640)
    if not (etc / "login.defs").exists():
        login_defs = Path("/etc/login.defs")
        if login_defs.exists():
            shutil.copy(login_defs, etc / "login.defs")
        else:
            (etc / "login.defs").write_text("UID_MIN 1000\nUID_MAX 60000\n")
    return root
