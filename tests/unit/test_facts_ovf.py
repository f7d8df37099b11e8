"""ovf-env.xml parsing: every fixture, the password-free copy, hostile inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from facts.ovf import MAX_OVF_BYTES, OvfEnv, OvfError, parse_ovf_env, without_password
from system.redact import redact
from tests.support.fixtures import FIXTURES

WALA = sorted((FIXTURES / "walinuxagent").glob("ovf-env*.xml"))
CLOUDINIT = sorted((FIXTURES / "cloudinit" / "ovf").glob("*.xml"))

pytestmark = pytest.mark.skipif(not WALA or not CLOUDINIT, reason="shared fixtures not found")


def _load(path: Path) -> OvfEnv:
    return parse_ovf_env(path.read_bytes(), source=path.name)


def test_fixture_sets_are_complete() -> None:
    assert [p.name for p in WALA] == ["ovf-env-2.xml", "ovf-env-3.xml", "ovf-env-4.xml",
                                     "ovf-env.xml"]
    assert len(CLOUDINIT) == 7


@pytest.mark.parametrize("path", WALA, ids=lambda p: p.name)
def test_walinuxagent_fixtures(path: Path) -> None:
    env = _load(path)
    assert env.username == "UserName"
    assert env.hostname == "HostName"
    assert env.password == "UserPassword"
    assert env.custom_data == "CustomData"
    assert env.disable_ssh_password_authentication is False
    assert len(env.public_keys) == 1
    key = env.public_keys[0]
    assert key.fingerprint == "EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62"
    assert key.path == "$HOME/UserName/.ssh/authorized_keys"
    assert key.value == "ssh-rsa AAAANOTAREALKEY== foo@bar.local"
    assert [(k.fingerprint, k.path) for k in env.key_pairs] == [
        ("EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62", "$HOME/UserName/.ssh/id_rsa")]
    assert env.preprovisioned_vm is False
    assert env.preprovisioned_vm_type is None


@pytest.mark.parametrize(("name", "expected"), [
    ("ovf-env.xml", False),     # "false": provision, then stand the agent down
    ("ovf-env-2.xml", True),    # "true"
    ("ovf-env-3.xml", True),    # empty: the default
    ("ovf-env-4.xml", True),    # "bad data": only an explicit false disables
])
def test_provision_guest_agent(name: str, expected: bool) -> None:
    assert _load(FIXTURES / "walinuxagent" / name).provision_guest_agent is expected


@pytest.mark.parametrize("path", CLOUDINIT, ids=lambda p: p.name)
def test_cloudinit_fixtures_parse(path: Path) -> None:
    env = _load(path)
    assert env.username == "test-user"
    assert env.hostname == "test-host"
    assert env.provision_guest_agent is False


def test_cloudinit_password_customdata() -> None:
    env = _load(FIXTURES / "cloudinit/ovf/ovf-env_password_customdata.xml")
    assert env.password == "Passw0rd!"
    assert env.custom_data == "I2Nsb3VkLWNvbmZpZwpydW5jbWQ6IFtlY2hvIGhpXQo="
    assert env.disable_ssh_password_authentication is False


def test_cloudinit_minimal_defaults() -> None:
    env = _load(FIXTURES / "cloudinit/ovf/ovf-env_minimal.xml")
    assert env.password is None and env.custom_data is None
    assert env.public_keys == () and env.key_pairs == ()
    # No DisableSshPasswordAuthentication element: walinuxagent's default, disabled.
    assert env.disable_ssh_password_authentication is True
    assert env.preprovisioned_vm is False and env.preprovisioned_vm_type is None  # xsi:nil


def test_cloudinit_sshkeys_fingerprint() -> None:
    env = _load(FIXTURES / "cloudinit/ovf/ovf-env_sshkeys_fingerprint.xml")
    assert env.disable_ssh_password_authentication is True
    first, second = env.public_keys
    assert first.fingerprint == "073E19D14D1C799224C6A0FD8DDAB6A8BF27D473"
    assert first.value is None
    assert first.path == "/home/test-user/.ssh/authorized_keys"
    assert second.fingerprint is None
    assert second.value == "ssh-rsa AAAAB3... user@host"


@pytest.mark.parametrize(("name", "vm", "kind"), [
    ("ovf-env_pps_osdisk.xml", False, "PreprovisionedOSDisk"),
    ("ovf-env_pps_running.xml", True, "Running"),
    ("ovf-env_pps_savable.xml", True, "Savable"),
    ("ovf-env_guest_proxy_agent.xml", False, None),
])
def test_cloudinit_preprovisioned(name: str, vm: bool, kind: str | None) -> None:
    env = _load(FIXTURES / "cloudinit/ovf" / name)
    assert (env.preprovisioned_vm, env.preprovisioned_vm_type) == (vm, kind)


def test_password_and_custom_data_never_shown() -> None:
    env = _load(FIXTURES / "cloudinit/ovf/ovf-env_password_customdata.xml")
    shown = repr(env) + str(env)
    assert "Passw0rd!" not in shown
    assert "I2Nsb3Vk" not in shown
    # Registered as secrets: any log line or message masks them.
    assert "Passw0rd!" not in redact("password is Passw0rd!")
    assert env.custom_data is not None and env.custom_data not in redact(f"x {env.custom_data}")
    public = env.public_facts()
    assert public["password_set"] is True
    assert public["custom_data_sha256"] == hashlib.sha256(env.custom_data.encode()).hexdigest()
    assert "Passw0rd!" not in str(public)


_VALID = (FIXTURES / "cloudinit/ovf/ovf-env_password_customdata.xml").read_bytes() \
    if CLOUDINIT else b""


def _doc(config: str, settings: str = "") -> bytes:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
             xmlns:wa="http://schemas.microsoft.com/windowsazure">
 <wa:ProvisioningSection><wa:Version>1.0</wa:Version>
  <wa:LinuxProvisioningConfigurationSet>{config}</wa:LinuxProvisioningConfigurationSet>
 </wa:ProvisioningSection>{settings}
</Environment>""".encode()


@pytest.mark.parametrize(("text", "expected"), [
    ("true", True), ("TRUE", True), (" True ", True), ("false", False), ("yes", False),
    ("1", False), ("", False),
])
def test_disable_ssh_password_only_true_disables(text: str, expected: bool) -> None:
    env = parse_ovf_env(_doc(f"<wa:UserName>u</wa:UserName><wa:DisableSshPasswordAuthentication>"
                             f"{text}</wa:DisableSshPasswordAuthentication>"))
    assert env.disable_ssh_password_authentication is expected


def test_fingerprints_upper_cased_and_whitespace_trimmed() -> None:
    env = parse_ovf_env(_doc(
        "<wa:UserName>\n  azureuser \n</wa:UserName><wa:SSH><wa:PublicKeys><wa:PublicKey>"
        "<wa:Fingerprint> abcdef01 </wa:Fingerprint><wa:Path>/p</wa:Path></wa:PublicKey>"
        "</wa:PublicKeys></wa:SSH>"))
    assert env.username == "azureuser"
    assert env.public_keys[0].fingerprint == "ABCDEF01"


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not well-formed"),
    (b"this is not xml", "not well-formed"),
    (b"<Environment><unclosed></Environment>", "not well-formed"),
    (b"<Environment/>", "expected Environment in namespace"),
    (b'<Environment xmlns="urn:other"/>', "expected Environment"),
    (b'<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"/>',
     "LinuxProvisioningConfigurationSet"),
    # The right element names in the wrong namespace are not the provisioning section.
    (b'<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"><ProvisioningSection>'
     b"<LinuxProvisioningConfigurationSet><UserName>u</UserName>"
     b"</LinuxProvisioningConfigurationSet></ProvisioningSection></Environment>",
     "LinuxProvisioningConfigurationSet"),
    (_doc("<wa:HostName>h</wa:HostName>"), "UserName is missing"),
    (_doc("<wa:UserName>   </wa:UserName>"), "UserName is missing"),
    (_doc("<wa:UserName>u</wa:UserName><wa:SSH><wa:PublicKeys><wa:PublicKey>"
          "<wa:Value>ssh-rsa A</wa:Value></wa:PublicKey></wa:PublicKeys></wa:SSH>"),
     "PublicKey[1]/Path is missing"),
    (_doc("<wa:UserName>u</wa:UserName><wa:SSH><wa:PublicKeys><wa:PublicKey>"
          "<wa:Path>/p</wa:Path></wa:PublicKey></wa:PublicKeys></wa:SSH>"),
     "neither Fingerprint nor Value"),
    (_doc("<wa:UserName>u</wa:UserName><wa:SSH><wa:KeyPairs><wa:KeyPair>"
          "<wa:Path>/p</wa:Path></wa:KeyPair></wa:KeyPairs></wa:SSH>"),
     "KeyPair[1]/Fingerprint is missing"),
    # A thumbprint names <Lib.Dir>/<THUMB>.crt and .prv: nothing that could leave it.
    (_doc("<wa:UserName>u</wa:UserName><wa:SSH><wa:KeyPairs><wa:KeyPair>"
          "<wa:Fingerprint>../../etc/shadow</wa:Fingerprint>"
          "<wa:Path>/p</wa:Path></wa:KeyPair></wa:KeyPairs></wa:SSH>"),
     "KeyPair[1]/Fingerprint '../../ETC/SHADOW' is not a hexadecimal"),
    (_doc("<wa:UserName>u</wa:UserName><wa:SSH><wa:PublicKeys><wa:PublicKey>"
          "<wa:Fingerprint>AB CD</wa:Fingerprint><wa:Path>/p</wa:Path>"
          "</wa:PublicKey></wa:PublicKeys></wa:SSH>"),
     "PublicKey[1]/Fingerprint 'AB CD' is not a hexadecimal"),
    (_doc("<wa:ConfigurationSetType>WindowsProvisioningConfiguration</wa:ConfigurationSetType>"
          "<wa:UserName>u</wa:UserName>"), "ConfigurationSetType"),
])
def test_bad_documents_are_named_errors(data: bytes, message: str) -> None:
    with pytest.raises(OvfError, match="ovf-env.xml: .*" + message.replace("[", r"\[")
                       .replace("]", r"\]")):
        parse_ovf_env(data)


def test_doctype_refused() -> None:
    doc = b'<?xml version="1.0"?><!DOCTYPE Environment SYSTEM "http://example.invalid/x.dtd">' \
        + _doc("<wa:UserName>u</wa:UserName>").split(b"?>", 1)[1]
    with pytest.raises(OvfError, match="DOCTYPE is not allowed"):
        parse_ovf_env(doc)


def test_entity_bomb_refused() -> None:
    lol = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    bomb = (f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">{lol}]>'
            '<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1">'
            "&lol9;</Environment>").encode()
    with pytest.raises(OvfError, match="not allowed"):
        parse_ovf_env(bomb)


def test_external_entity_refused() -> None:
    doc = (b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/shadow">]>'
           b'<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1">&x;</Environment>')
    with pytest.raises(OvfError, match="not allowed"):
        parse_ovf_env(doc)


def test_huge_document_refused_before_parsing() -> None:
    huge = _doc("<wa:UserName>u</wa:UserName>" + "<!--" + "x" * (100 * 1024 * 1024) + "-->")
    with pytest.raises(OvfError, match=f"too large .*limit {MAX_OVF_BYTES}"):
        parse_ovf_env(huge)


def test_error_messages_never_hold_the_password() -> None:
    doc = _doc("<wa:UserPassword>S3cret-Hunter2</wa:UserPassword>")
    with pytest.raises(OvfError) as caught:
        parse_ovf_env(doc)
    assert "S3cret-Hunter2" not in redact(str(caught.value))
    assert "S3cret-Hunter2" not in str(caught.value)


@pytest.mark.parametrize("path", WALA + CLOUDINIT, ids=lambda p: p.name)
def test_without_password_keeps_everything_else(path: Path) -> None:
    data = path.read_bytes()
    stripped = without_password(data)
    original = parse_ovf_env(data)
    again = parse_ovf_env(stripped)
    assert b"UserPassword" not in stripped
    assert again.password is None
    assert again.public_facts() | {"password_set": original.password is not None} \
        == original.public_facts()
    if original.password is None:
        assert stripped == data


@pytest.mark.parametrize("element", [
    b"<wa:UserPassword/>",
    b"<wa:UserPassword xmlns:i='urn:i'>p&amp;ss&lt;word</wa:UserPassword>",
    b"<wa:UserPassword>\n multi\n line </wa:UserPassword >",
    b"<wa:UserPassword><![CDATA[tricky]]></wa:UserPassword>",
])
def test_without_password_variants(element: bytes) -> None:
    doc = _doc("<wa:UserName>u</wa:UserName>" + element.decode())
    stripped = without_password(doc)
    assert b"UserPassword" not in stripped
    assert parse_ovf_env(stripped).username == "u"


def test_without_password_fails_closed_on_markup_it_cannot_strip() -> None:
    # A CDATA section that contains the closing tag: stripping by pattern would leave a rest.
    doc = _doc("<wa:UserName>u</wa:UserName>"
               "<wa:UserPassword><![CDATA[a</wa:UserPassword>b]]></wa:UserPassword>")
    assert parse_ovf_env(doc).password == "a</wa:UserPassword>b"
    with pytest.raises(OvfError, match="cannot remove UserPassword safely"):
        without_password(doc)


def _utf16(data: bytes, codec: str, bom: bytes = b"") -> bytes:
    text = data.decode().replace('encoding="utf-8"', 'encoding="utf-16"')
    assert 'encoding="utf-16"' in text
    return bom + text.encode(codec)


@pytest.mark.parametrize(("codec", "bom"), [
    ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"),
    ("utf-16-le", b""), ("utf-16-be", b""),
], ids=["le-bom", "be-bom", "le", "be"])
def test_utf16_document_kept_as_utf8_without_password(codec: str, bom: bytes) -> None:
    data = _utf16(_VALID, codec, bom)
    original = parse_ovf_env(data)
    assert original.password == "Passw0rd!"
    copy = without_password(data)
    text = copy.decode("utf-8")  # strict: the copy is UTF-8, without a BOM
    assert text.startswith('<?xml version="1.0" encoding="utf-8"?>')
    assert "UserPassword" not in text and "Passw0rd!" not in text
    assert parse_ovf_env(copy) == original._replace(password=None)
    # Everything but the password and the declared encoding is kept as it was.
    assert text == _VALID.decode().replace(
        "<ns1:UserPassword>Passw0rd!</ns1:UserPassword>", "")


def test_latin1_document_kept_as_utf8() -> None:
    data = _doc("<wa:UserName>u</wa:UserName><wa:HostName>h</wa:HostName>"
                "<wa:UserPassword>p\u00e4ss</wa:UserPassword>"
                "<wa:CustomData>caf\u00e9</wa:CustomData>").decode()
    data_latin1 = data.replace('encoding="utf-8"', "encoding='ISO-8859-1'").encode("latin-1")
    original = parse_ovf_env(data_latin1)
    copy = without_password(data_latin1)
    assert copy.decode("utf-8").startswith("<?xml version=\"1.0\" encoding='utf-8'?>")
    assert parse_ovf_env(copy) == original._replace(password=None)
    assert "caf\u00e9".encode() in copy and b"UserPassword" not in copy


def test_utf16_without_password_element_is_still_converted() -> None:
    data = _utf16(_doc("<wa:UserName>u</wa:UserName>"), "utf-16-le", b"\xff\xfe")
    copy = without_password(data)
    assert copy == _doc("<wa:UserName>u</wa:UserName>")


_KEY = ("<wa:UserName>u</wa:UserName><wa:SSH><wa:PublicKeys><wa:PublicKey>"
        "<wa:Value>ssh-ed25519 AAAA</wa:Value><wa:Path>{path}</wa:Path>"
        "</wa:PublicKey></wa:PublicKeys></wa:SSH>")
_PAIR = ("<wa:UserName>u</wa:UserName><wa:SSH><wa:KeyPairs><wa:KeyPair>"
         "<wa:Fingerprint>AB</wa:Fingerprint><wa:Path>{path}</wa:Path>"
         "</wa:KeyPair></wa:KeyPairs></wa:SSH>")


@pytest.mark.parametrize("path", [
    "/home/u/../../etc/sudoers.d/x", "../../etc/shadow", "/home/u/.ssh/..", "..",
    "/home/u/.ssh/../authorized_keys",
])
@pytest.mark.parametrize(("template", "where"), [
    (_KEY, "SSH/PublicKeys/PublicKey[1]/Path"), (_PAIR, "SSH/KeyPairs/KeyPair[1]/Path"),
])
def test_key_path_with_dot_dot_is_refused(template: str, where: str, path: str) -> None:
    with pytest.raises(OvfError) as caught:
        parse_ovf_env(_doc(template.format(path=path)))
    message = str(caught.value)
    assert message.startswith(f"ovf-env.xml: {where} {path!r}")
    assert "'..'" in message


@pytest.mark.parametrize("path", ["/home/u/..ssh/keys", "/home/u/.ssh/authorized_keys..",
                                  "/home/u/./.ssh/authorized_keys"])
def test_key_path_with_dots_in_names_is_fine(path: str) -> None:
    assert parse_ovf_env(_doc(_KEY.format(path=path))).public_keys[0].path == path


@pytest.mark.parametrize("nul", ["\x00", "&#0;"])
def test_key_path_with_nul_is_refused(nul: str) -> None:
    # XML 1.0 has no NUL at all, so the parser refuses it before the path is looked at.
    with pytest.raises(OvfError):
        parse_ovf_env(_doc(_KEY.format(path=f"/home/u/.ssh/a{nul}b")))


def test_key_path_check_itself_refuses_nul() -> None:
    """Defence in depth: the check holds even for a tree not read by expat."""
    from facts.ovf import WA_NS, _key_path
    from wire.xmldoc import Element

    node = Element("{" + WA_NS + "}PublicKey", {})
    path = Element("{" + WA_NS + "}Path", {})
    path.text = "/home/u/.ssh/a\x00b"
    node.children.append(path)
    with pytest.raises(OvfError, match=r"PublicKey\[1\]/Path '/home/u/.ssh/a\\x00b' holds a NUL"):
        _key_path(node, "SSH/PublicKeys/PublicKey[1]", "ovf-env.xml")
