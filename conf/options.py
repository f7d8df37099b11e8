"""Every waagent.conf option the agent knows: name, kind, default and what it allows.

One table, so the parser, `-show-configuration`, the docs and fingerprints agree.
Defaults are waagent 2.7.3's code defaults (azurelinuxagent/common/conf.py), what it
uses and shows for an option its conf leaves out: `waagent -show-configuration` prints
the same values for the same file (tests/integration/test_waagent_parity.py).
Distribution confs set several options to other values (PLATFORM.md section 11).
"""

from typing import Literal, NamedTuple

Kind = Literal["bool", "int", "str", "choice", "path"]
Value = bool | int | str | None


class Option(NamedTuple):
    """One option: its canonical name, type, default, and allowed values for choices."""

    name: str
    kind: Kind
    default: Value
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    secret: bool = False
    doc: str = ""

    def allowed(self) -> str:
        """What a value of this option may be, for error messages."""
        if self.kind == "bool":
            return "y or n"
        if self.kind == "int":
            low = f" >= {self.minimum}" if self.minimum is not None else ""
            return f"an integer{low}"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "path":
            return "an absolute path without '..' components, or None"
        return "a string or None"


def _b(name: str, default: bool, doc: str = "") -> Option:
    return Option(name, "bool", default, doc=doc)


def _i(name: str, default: int | None, minimum: int | None = 0, doc: str = "") -> Option:
    return Option(name, "int", default, minimum=minimum, doc=doc)


def _s(name: str, default: str | None, doc: str = "", secret: bool = False) -> Option:
    return Option(name, "str", default, doc=doc, secret=secret)


def _p(name: str, default: str | None, doc: str = "") -> Option:
    return Option(name, "path", default, doc=doc)


def _c(name: str, default: str, choices: tuple[str, ...], doc: str = "") -> Option:
    return Option(name, "choice", default, choices=choices, doc=doc)


_TABLE: tuple[Option, ...] = (
    # Provisioning
    _b("Provisioning.Enabled", True, "provision from the OVF data"),
    _c("Provisioning.Agent", "auto", ("auto", "waagent", "cloud-init", "disabled"),
       "who provisions: auto stands aside when cloud-init does"),
    _b("Provisioning.DeleteRootPassword", False, "lock root's password"),
    # waagent 2.7.3's code default is n; y stays until the test harnesses' confs, which
    # provision roots without host keys, set it (tests/support/waagent_parity.py).
    _b("Provisioning.RegenerateSshHostKeyPair", False, "new SSH host keys for each VM"),
    _c("Provisioning.SshHostKeyPairType", "rsa", ("rsa", "dsa", "ecdsa", "ed25519", "auto"),
       "host key type to generate (auto: all)"),
    _b("Provisioning.MonitorHostName", False, "publish a changed hostname"),
    _i("Provisioning.MonitorHostNamePeriod", 30, 1),
    _b("Provisioning.DecodeCustomData", False, "base64-decode custom data"),
    _b("Provisioning.ExecuteCustomData", False, "run custom data as a script"),
    _b("Provisioning.AllowResetSysUser", False, "allow provisioning a system user"),
    _c("Provisioning.PasswordCryptId", "6", ("1", "2a", "5", "6"),
       "crypt(3) hash: 1 MD5, 2a Blowfish, 5 SHA-256, 6 SHA-512"),
    _i("Provisioning.PasswordCryptSaltLength", 10, 1),
    _b("Provisioning.UseCloudInit", False),
    # Resource disk
    _b("ResourceDisk.Format", False, "partition, format and mount the resource disk"),
    _c("ResourceDisk.Filesystem", "ext3", ("ext4", "ext3", "ext2", "xfs", "btrfs"),
       "filesystem for the resource disk"),
    _p("ResourceDisk.MountPoint", "/mnt/resource"),
    _s("ResourceDisk.MountOptions", None, "mount -o options"),
    _b("ResourceDisk.EnableSwap", False),
    _i("ResourceDisk.SwapSizeMB", 0, 0),
    _b("ResourceDisk.EnableSwapEncryption", False),
    # Logs
    _b("Logs.Verbose", False),
    _b("Logs.Console", True),
    _b("Logs.Collect", True),
    _i("Logs.CollectPeriod", 3600, 1),
    # OS
    _b("OS.EnableRDMA", False),
    _i("OS.RootDeviceScsiTimeout", None, 1, "seconds; unset: the kernel's own timeout"),
    _i("OS.RootDeviceScsiTimeoutPeriod", 30, 1),
    _p("OS.OpensslPath", "/usr/bin/openssl"),
    _p("OS.SshDir", "/etc/ssh"),
    _p("OS.HomeDir", "/home"),
    _p("OS.PasswordPath", "/etc/shadow"),
    _p("OS.SudoersDir", "/etc/sudoers.d"),
    _i("OS.SshClientAliveInterval", 180, 0),
    _b("OS.EnableFirewall", False),
    _i("OS.EnableFirewallPeriod", 30, 1),
    _b("OS.EnableFIPS", False),
    _i("OS.RemovePersistentNetRulesPeriod", 30, 1),
    _i("OS.MonitorDhcpClientRestartPeriod", 30, 1),
    _b("OS.AllowHTTP", False),
    _b("OS.CheckRdmaDriver", False),
    _b("OS.UpdateRdmaDriver", False),
    # Paths
    _p("Lib.Dir", "/var/lib/waagent"),
    _p("DVD.MountPoint", "/mnt/cdrom/secure"),
    _p("Pid.File", "/var/run/waagent.pid"),
    _p("Extension.LogDir", "/var/log/azure"),
    # Network
    _s("HttpProxy.Host", None),
    _i("HttpProxy.Port", None, 1),
    _b("LBProbeResponder", True),
    _c("Protocol.EndpointDiscovery", "dhcp", ("dhcp", "static")),
    # Updates and extensions
    _b("AutoUpdate.Enabled", True),
    _s("AutoUpdate.GAFamily", "Prod"),
    _b("AutoUpdate.UpdateToLatestVersion", True),
    _i("Autoupdate.Frequency", 3600, 1),
    _b("Extensions.Enabled", True),
    _i("Extensions.GoalStatePeriod", 6, 1),
    # waagent 2.7.3 uses GoalStatePeriod when this is unset, but shows (and we keep) 6.
    _i("Extensions.InitialGoalStatePeriod", 6, 1),
    _i("Extensions.GoalStateHistoryCleanupPeriod", 1800, 1),
    _b("Extensions.WaitForCloudInit", False),
    _i("Extensions.WaitForCloudInitTimeout", 3600, 0),
    _b("DetectScvmmEnv", False),
    _b("EnableOverProvisioning", True),
    # Debug: waagent's experimental knobs (cgroups, FastTrack, update cadence), kept so
    # that a conf written for it reads the same here.
    _b("Debug.CgroupLogMetrics", False),
    _b("Debug.CgroupDisableOnProcessCheckFailure", True),
    _b("Debug.CgroupDisableOnQuotaCheckFailure", True),
    _b("Debug.EnableFastTrack", True),
    _b("Debug.EnableGAVersioning", False),
    _s("Debug.CgroupMonitorExpiryTime", "2022-03-31"),
    _s("Debug.CgroupMonitorExtensionName", "Microsoft.Azure.Monitor.AzureMonitorLinuxAgent"),
    _i("Debug.CgroupCheckPeriod", 300, 1),
    _i("Debug.AgentCpuQuota", 75, 1),
    _i("Debug.EtpCollectionPeriod", 300, 1),
    _i("Debug.AutoUpdateHotfixFrequency", 14400, 1),
    _i("Debug.AutoUpdateNormalFrequency", 86400, 1),
    _b("Debug.EnableExtensionPolicy", False),
    _b("Debug.EnableSignatureValidation", False),
)

OPTIONS: dict[str, Option] = {opt.name: opt for opt in _TABLE}
# waagent matches keys as written; files in the wild vary the case (Autoupdate vs AutoUpdate).
OPTIONS_BY_LOWER: dict[str, Option] = {opt.name.lower(): opt for opt in _TABLE}
