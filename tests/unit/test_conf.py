"""waagent.conf: typed values, errors naming the line, the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest

from conf import OPTIONS, ConfigError, load_config, parse_config
from conf.config import default_config


def test_defaults_match_platform_reference() -> None:
    conf = default_config()
    assert conf.flag("Provisioning.Enabled") is True
    assert conf.flag("Provisioning.DeleteRootPassword") is False
    assert conf.text("Provisioning.SshHostKeyPairType") == "rsa"
    assert conf.text("Provisioning.PasswordCryptId") == "6"
    assert conf.number("Provisioning.PasswordCryptSaltLength") == 10
    assert conf.text("ResourceDisk.MountPoint") == "/mnt/resource"
    assert conf.text("ResourceDisk.MountOptions") is None
    assert conf.number("ResourceDisk.SwapSizeMB") == 0
    # waagent 2.7.3's code defaults (its shipped conf sets 300 and leaves openssl to it).
    assert conf.number("OS.RootDeviceScsiTimeout") is None
    assert conf.text("OS.OpensslPath") == "/usr/bin/openssl"
    assert conf.text("Lib.Dir") == "/var/lib/waagent"
    assert conf.text("Protocol.EndpointDiscovery") == "dhcp"
    assert conf.number("Extensions.GoalStatePeriod") == 6
    assert conf.source("Lib.Dir") == "default"


def test_values_comments_and_spaces() -> None:
    conf = parse_config(
        "# comment\n\n  ResourceDisk.SwapSizeMB = 2048  \nResourceDisk.EnableSwap=y\n"
        "ResourceDisk.MountOptions=nodev,nosuid\nOS.OpensslPath=None\n"
        "Provisioning.SshHostKeyPairType=ED25519\n", "/etc/waagent.conf")
    assert conf.number("ResourceDisk.SwapSizeMB") == 2048
    assert conf.flag("ResourceDisk.EnableSwap") is True
    assert conf.text("ResourceDisk.MountOptions") == "nodev,nosuid"
    assert conf.text("OS.OpensslPath") == "/usr/bin/openssl"  # None: the default, as in waagent
    assert conf.text("Provisioning.SshHostKeyPairType") == "ed25519"
    assert conf.source("ResourceDisk.SwapSizeMB") == "/etc/waagent.conf:3"


def test_none_and_quotes_read_as_waagent_reads_them() -> None:
    conf = parse_config('Lib.Dir=None\nResourceDisk.MountOptions="nodev,nosuid" # c\n'
                        'HttpProxy.Port=None\nOS.RootDeviceScsiTimeout=None\n')
    assert conf.text("Lib.Dir") == "/var/lib/waagent"
    assert conf.text("ResourceDisk.MountOptions") == "nodev,nosuid"
    assert conf.number("HttpProxy.Port") is None
    assert conf.number("OS.RootDeviceScsiTimeout") is None


@pytest.mark.parametrize(("line", "words"), [
    ("ResourceDisk.SwapSizeMB=lots", ["ResourceDisk.SwapSizeMB", "'lots'", "integer"]),
    ("Provisioning.Enabled=maybe", ["Provisioning.Enabled", "'maybe'", "y or n"]),
    ("Provisioning.SshHostKeyPairType=dsa2", ["one of rsa, dsa, ecdsa, ed25519, auto"]),
    ("ResourceDisk.MountPoint=mnt", ["absolute path"]),
    ("ResourceDisk.SwapSizeMB=-5", [">= 0"]),
    ("justtext", ["expected Key=Value"]),
])
def test_wrong_value_names_file_line_option(line: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"# first\n{line}\n", "/etc/waagent.conf")
    message = str(err.value)
    assert message.startswith("/etc/waagent.conf:2: ")
    for word in words:
        assert word in message


PATH_OPTIONS = ("Lib.Dir", "DVD.MountPoint", "Pid.File", "Extension.LogDir", "OS.OpensslPath",
                "OS.SshDir", "OS.HomeDir", "OS.PasswordPath", "OS.SudoersDir",
                "ResourceDisk.MountPoint")


def test_every_path_valued_option_is_typed_as_a_path() -> None:
    assert {o.name for o in OPTIONS.values() if o.kind == "path"} == set(PATH_OPTIONS)


@pytest.mark.parametrize("name", PATH_OPTIONS)
@pytest.mark.parametrize("value", ["/var/lib/../../etc", "/mnt/..", "/../etc/sudoers.d",
                                   "/home/../root/", "/srv/a/../b"])
def test_dotdot_in_a_path_option_is_refused(name: str, value: str) -> None:
    # With root=DIR a `..` would lead the agent's writes out of the image (issue 15).
    with pytest.raises(ConfigError) as err:
        parse_config(f"# first\n{name}={value}\n", "/etc/waagent.conf")
    message = str(err.value)
    assert message.startswith(f"/etc/waagent.conf:2: {name}=")
    assert "'..'" in message and "absolute path" in message


def test_dots_inside_a_path_component_are_fine() -> None:
    conf = parse_config("Lib.Dir=/srv/..agent\nOS.HomeDir=/srv/home..old/./x\n")
    assert conf.text("Lib.Dir") == "/srv/..agent"
    assert conf.text("OS.HomeDir") == "/srv/home..old/./x"


def test_numeric_option_is_never_read_as_boolean() -> None:
    # The old parser's trap: a number in a boolean slot was silently ignored.
    with pytest.raises(ConfigError, match="ResourceDisk.EnableSwap"):
        parse_config("ResourceDisk.EnableSwap=2048\n")


def test_unknown_key_warns(caplog: pytest.LogCaptureFixture) -> None:
    conf = parse_config("FauxKey1= Value1\nOS.SshDir=/etc/ssh\n", "x.conf")
    assert conf.unknown == ("FauxKey1",)
    assert "x.conf:1: unknown option FauxKey1" in caplog.text


def test_key_case_is_forgiven() -> None:
    conf = parse_config("AutoUpdate.Frequency=60\nautoupdate.enabled=n\n")
    assert conf.number("Autoupdate.Frequency") == 60
    assert conf.flag("AutoUpdate.Enabled") is False


def test_config_is_immutable_and_subset_fingerprints() -> None:
    conf = parse_config("ResourceDisk.SwapSizeMB=10\n")
    with pytest.raises(TypeError):
        conf.settings["ResourceDisk.SwapSizeMB"] = None  # type: ignore[index]
    other = parse_config("ResourceDisk.SwapSizeMB=10\nOS.SshDir=/etc/ssh2\n")
    keys = ["ResourceDisk.SwapSizeMB", "ResourceDisk.EnableSwap"]
    assert conf.subset(keys) == {"ResourceDisk.EnableSwap": False, "ResourceDisk.SwapSizeMB": 10}
    assert conf.fingerprint(keys) == other.fingerprint(keys)
    assert conf.fingerprint(["OS.SshDir"]) != other.fingerprint(["OS.SshDir"])


def test_typed_getters_refuse_wrong_kind() -> None:
    conf = default_config()
    with pytest.raises(TypeError):
        conf.flag("ResourceDisk.SwapSizeMB")
    with pytest.raises(TypeError):
        conf.number("Provisioning.Enabled")
    with pytest.raises(KeyError):
        conf.flag("No.Such")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "waagent.conf")


def shipped_configs(fixtures: Path) -> list[Path]:
    base = fixtures / "walinuxagent"
    return sorted([*base.glob("config/*.conf"), base / "repo-config/waagent.conf",
                   base / "repo-config/ubuntu/waagent.conf", base / "test_waagent.conf"])


def test_shipped_distribution_configs_load(fixtures: Path) -> None:
    files = shipped_configs(fixtures)
    assert len(files) >= 10
    for file in files:
        conf = load_config(file)
        assert conf.file == str(file)
    test_conf = load_config(fixtures / "walinuxagent/test_waagent.conf")
    assert test_conf.flag("Provisioning.DecodeCustomData") is False  # "n#comment"
    assert test_conf.number("OS.SshClientAliveInterval") == 42
    ubuntu = load_config(fixtures / "walinuxagent/repo-config/ubuntu/waagent.conf")
    assert ubuntu.source("Provisioning.Agent") != "default"


def test_every_option_has_an_allowed_description() -> None:
    for opt in OPTIONS.values():
        assert opt.allowed()
