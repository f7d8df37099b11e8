"""ovf-env.xml: the provisioning environment, parsed into a typed, frozen OvfEnv.

Format: PLATFORM.md section 4. The document comes from the platform but is
still untrusted input: it is size-capped and parsed with wire.xmldoc (expat, with
any DOCTYPE, entity or external reference refused: no entity bombs).
The password and the custom data are registered as secrets the moment they
are parsed, so no log line or error message can show them.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from typing import TYPE_CHECKING, Any, NamedTuple

from system.errors import AgentError
from system.redact import register_secret

if TYPE_CHECKING:
    from wire.xmldoc import Element

OVF_NS = "http://schemas.dmtf.org/ovf/environment/1"
WA_NS = "http://schemas.microsoft.com/windowsazure"

# Real documents are a few KiB; anything near this is not an ovf-env.xml.
MAX_OVF_BYTES = 1024 * 1024
_THUMBPRINT = re.compile(r"[0-9A-F]+")  # a certificate's SHA-1 thumbprint, upper case

_WA = "{" + WA_NS + "}"
_OVF = "{" + OVF_NS + "}"


# Fields of OvfEnv that repr() leaves out.
_SECRET_FIELDS = frozenset({"password", "custom_data"})


class OvfError(AgentError):
    """ovf-env.xml cannot be used; the message names the field or the problem."""


class SshPublicKey(NamedTuple):
    """An authorized key: its Value (OpenSSH text), or a certificate named by Fingerprint."""

    path: str
    fingerprint: str | None = None
    value: str | None = None


class SshKeyPair(NamedTuple):
    """A key pair whose private half is `<Lib.Dir>/<fingerprint>.prv`, installed at path."""

    fingerprint: str
    path: str


class OvfEnv(NamedTuple):
    """The provisioning environment (LinuxProvisioningConfigurationSet + PlatformSettings).

    `password` and `custom_data` never appear in repr(); custom_data is the text as
    sent (base64 unless the platform says otherwise): decoding is the task's job
    (Provisioning.DecodeCustomData).
    """

    username: str
    hostname: str | None = None
    password: str | None = None
    custom_data: str | None = None
    # walinuxagent's default when the element is absent: password logins disabled.
    disable_ssh_password_authentication: bool = True
    public_keys: tuple[SshPublicKey, ...] = ()
    key_pairs: tuple[SshKeyPair, ...] = ()
    # Only an explicit "false" stands the agent down after provisioning.
    provision_guest_agent: bool = True
    preprovisioned_vm: bool = False
    preprovisioned_vm_type: str | None = None

    def __repr__(self) -> str:
        """Every field but the secrets."""
        shown = ", ".join(f"{name}={value!r}" for name, value in self._asdict().items()
                          if name not in _SECRET_FIELDS)
        return f"OvfEnv({shown})"

    def public_facts(self) -> dict[str, Any]:
        """A JSON-able view without secrets: password as a flag, custom data as a sha256."""
        return {
            "username": self.username,
            "hostname": self.hostname,
            "password_set": self.password is not None,
            "custom_data_sha256": (hashlib.sha256(self.custom_data.encode()).hexdigest()
                                   if self.custom_data is not None else None),
            "disable_ssh_password_authentication": self.disable_ssh_password_authentication,
            "public_keys": [{"path": k.path, "fingerprint": k.fingerprint, "value": k.value}
                            for k in self.public_keys],
            "key_pairs": [{"path": k.path, "fingerprint": k.fingerprint} for k in self.key_pairs],
            "provision_guest_agent": self.provision_guest_agent,
            "preprovisioned_vm": self.preprovisioned_vm,
            "preprovisioned_vm_type": self.preprovisioned_vm_type,
        }


def parse_ovf_env(data: bytes | str, *, source: str = "ovf-env.xml") -> OvfEnv:
    """Parse ovf-env.xml; raise OvfError naming the problem (`source` names the file)."""
    root = _parse_xml(data, source)
    if root.tag != _OVF + "Environment":
        raise OvfError(f"{source}: root element is {_plain(root.tag)!r}, expected Environment "
                       f"in namespace {OVF_NS}")
    config = root.find(f"{_WA}ProvisioningSection/{_WA}LinuxProvisioningConfigurationSet")
    if config is None:
        raise OvfError(f"{source}: no ProvisioningSection/LinuxProvisioningConfigurationSet "
                       f"in namespace {WA_NS}")
    set_type = _text(config, "ConfigurationSetType")
    if set_type is not None and set_type.strip() != "LinuxProvisioningConfiguration":
        raise OvfError(f"{source}: ConfigurationSetType is {set_type.strip()!r}, "
                       "expected LinuxProvisioningConfiguration")

    # An empty element is no password / no custom data, as the platform means it.
    password = _text(config, "UserPassword") or None
    custom_data = _text(config, "CustomData") or None
    # Before anything else can fail and put them into a message.
    register_secret(password)
    register_secret(custom_data)
    if custom_data is not None:
        register_secret(custom_data.strip())

    username = (_text(config, "UserName") or "").strip()
    if not username:
        raise OvfError(f"{source}: UserName is missing or empty "
                       "(LinuxProvisioningConfigurationSet/UserName)")
    hostname = (_text(config, "HostName") or "").strip() or None
    disable_text = _text(config, "DisableSshPasswordAuthentication")
    disable_password = True if disable_text is None else disable_text.strip().lower() == "true"

    public_keys: list[SshPublicKey] = []
    for number, node in enumerate(config.findall(f"{_WA}SSH/{_WA}PublicKeys/{_WA}PublicKey"), 1):
        where = f"SSH/PublicKeys/PublicKey[{number}]"
        path = _key_path(node, where, source)
        fingerprint = _fingerprint(node, where, source)
        value = (_text(node, "Value") or "").strip() or None
        if fingerprint is None and value is None:
            raise OvfError(f"{source}: {where} has neither Fingerprint nor Value")
        public_keys.append(SshPublicKey(path=path, fingerprint=fingerprint, value=value))

    key_pairs: list[SshKeyPair] = []
    for number, node in enumerate(config.findall(f"{_WA}SSH/{_WA}KeyPairs/{_WA}KeyPair"), 1):
        where = f"SSH/KeyPairs/KeyPair[{number}]"
        path = _key_path(node, where, source)
        fingerprint = _fingerprint(node, where, source)
        if fingerprint is None:
            raise OvfError(f"{source}: {where}/Fingerprint is missing or empty")
        key_pairs.append(SshKeyPair(fingerprint=fingerprint, path=path))

    provision_agent = True
    preprovisioned = False
    preprovisioned_type: str | None = None
    settings = root.find(f"{_WA}PlatformSettingsSection/{_WA}PlatformSettings")
    if settings is not None:
        provision_text = _text(settings, "ProvisionGuestAgent")
        provision_agent = (provision_text or "").strip().lower() != "false"
        preprovisioned = (_text(settings, "PreprovisionedVm") or "").strip().lower() == "true"
        preprovisioned_type = (_text(settings, "PreprovisionedVMType") or "").strip() or None

    return OvfEnv(
        username=username,
        hostname=hostname,
        password=password,
        custom_data=custom_data,
        disable_ssh_password_authentication=disable_password,
        public_keys=tuple(public_keys),
        key_pairs=tuple(key_pairs),
        provision_guest_agent=provision_agent,
        preprovisioned_vm=preprovisioned,
        preprovisioned_vm_type=preprovisioned_type,
    )


# The start of a UserPassword element (any prefix); `_without_elements` finds its end.
_PASSWORD_START = r"<((?:[A-Za-z_][\w.-]*:)?UserPassword)\b"
_PASSWORD_START_BYTES = re.compile(_PASSWORD_START, re.ASCII)  # on bytes read as Latin-1
_PASSWORD_START_TEXT = re.compile(_PASSWORD_START)
# The encoding pseudo-attribute of an XML declaration (only ever at the very start).
_DECLARED_ENCODING = re.compile(r"""^(?P<head><\?xml\s[^>]*?\bencoding\s*=\s*)"""
                                r"""(?P<quote>["'])(?P<name>[A-Za-z][\w.-]*)(?P=quote)""")


def without_password(data: bytes, *, source: str = "ovf-env.xml") -> bytes:
    """The document with its UserPassword element removed, as UTF-8.

    A UTF-8 (or ASCII) document is kept byte for byte but the element. One in another
    encoding (UTF-16, with or without a BOM, or Latin-1) is decoded, loses the element,
    and is written as UTF-8 with its XML declaration saying so.
    The result is parsed again and must equal the original minus the password:
    a copy that might still hold it is never produced (fail closed).
    """
    original = parse_ovf_env(data, source=source)
    codec = _foreign_encoding(data, source)
    if codec is None:
        # Latin-1 maps each byte to one character and back: the rest stays byte for byte.
        stripped = _without_elements(data.decode("latin-1"),
                                     _PASSWORD_START_BYTES).encode("latin-1")
    else:
        # parse_ovf_env read it in this encoding, so it decodes (a BOM is dropped).
        text = _without_elements(data.decode(codec).removeprefix("\ufeff"), _PASSWORD_START_TEXT)
        stripped = _DECLARED_ENCODING.sub(r"\g<head>\g<quote>utf-8\g<quote>", text,
                                          count=1).encode()
    try:
        again = parse_ovf_env(stripped, source=source)
    except OvfError as err:
        raise OvfError(f"{source}: cannot remove UserPassword safely: {err}") from None
    if again.password is not None or again != original._replace(password=None):
        raise OvfError(f"{source}: cannot remove UserPassword safely "
                       "(unusual markup around it); no copy kept")
    return stripped


def _without_elements(text: str, start: re.Pattern[str]) -> str:
    """`text` without the elements whose start tag `start` matches (group 1: the tag),
    each up to its first `/>` or its closing tag, left to right; a start tag that never
    closes stays. In one pass: a pattern ending in a lazy `.*?</tag>` scans the rest of
    the document again for every start tag that never closes (a custom data of 1 MB
    holding `<UserPassword>` 70,000 times in a CDATA section took minutes)."""
    kept: list[str] = []
    position = 0
    tag_end = -1  # the first ">" at or after the current start tag
    no_closer_after: dict[str, int] = {}  # tag -> a position after which it never closes
    for found in start.finditer(text):
        if found.start() < position:
            continue  # inside an element already removed
        if tag_end < found.end():
            tag_end = text.find(">", found.end())
            if tag_end == -1:
                break  # no start tag after this one ends either
        if text[tag_end - 1] == "/":
            end = tag_end + 1
        else:
            tag = found[1]
            if no_closer_after.get(tag, len(text)) <= tag_end:
                continue
            closer = re.compile(r"</" + re.escape(tag) + r"\s*>").search(text, tag_end + 1)
            if closer is None:
                no_closer_after[tag] = tag_end
                continue
            end = closer.end()
        kept.append(text[position:found.start()])
        position = end
    kept.append(text[position:])
    return "".join(kept)


def _foreign_encoding(data: bytes, source: str) -> str | None:
    """The codec of a document not in UTF-8 (or ASCII, a subset), None for UTF-8.

    As XML 1.0 appendix F (and expat) tell: a BOM, the byte pattern of `<` in UTF-16,
    else the declaration's encoding.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # reads the BOM
    if data[:1] == b"\0" and data[1:2] not in (b"", b"\0"):
        return "utf-16-be"
    if data[1:2] == b"\0" and data[:1] not in (b"", b"\0"):
        return "utf-16-le"
    found = _DECLARED_ENCODING.match(data[:200].decode("ascii", errors="replace"))
    if found is None:
        return None
    try:
        name = codecs.lookup(found["name"]).name
    except LookupError:
        raise OvfError(f"{source}: its XML declaration names an encoding Python does not "
                       "know; no copy kept") from None
    return None if name in ("utf-8", "ascii") else name


def _parse_xml(data: bytes | str, source: str) -> Element:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_OVF_BYTES:
        raise OvfError(f"{source}: {len(raw)} bytes is too large for an ovf-env.xml "
                       f"(limit {MAX_OVF_BYTES})")
    # Imported here (with the wire package): importing this module, e.g. for the
    # media signature, does not mean an OVF is parsed.
    from wire.xmldoc import DoctypeRefused, Refused, XmlError, parse

    try:
        return parse(raw)
    except DoctypeRefused:
        raise OvfError(f"{source}: a DOCTYPE is not allowed in ovf-env.xml") from None
    except Refused:
        raise OvfError(f"{source}: entity declarations are not allowed in ovf-env.xml") from None
    except XmlError as err:
        # The parser's message holds only a position, never document text.
        raise OvfError(f"{source}: not well-formed XML: {err}") from None


def _text(parent: Element, name: str) -> str | None:
    node = parent.find(_WA + name)
    if node is None:
        return None
    return node.text or ""


def _required(parent: Element, name: str, where: str, source: str) -> str:
    value = (_text(parent, name) or "").strip()
    if not value:
        raise OvfError(f"{source}: {where}/{name} is missing or empty")
    return value


def _key_path(node: Element, where: str, source: str) -> str:
    """A key's Path, refused when it could lead elsewhere than it names (`..`, NUL)."""
    path = _required(node, "Path", where, source)
    # Writing through `..` would leave the directory the path seems to name, and with
    # root= the image; the kernel would cut a path at a NUL.
    if ".." in path.split("/"):
        raise OvfError(f"{source}: {where}/Path {path!r} has a '..' component, refused: "
                       "give the key file's full path without '..' in the VM's SSH settings")
    if "\0" in path:
        raise OvfError(f"{source}: {where}/Path {path!r} holds a NUL character, refused")
    return path


def _fingerprint(node: Element, where: str, source: str) -> str | None:
    # Certificate files are named by the upper-case thumbprint (<Lib.Dir>/<THUMB>.crt/.prv):
    # anything but hex digits could name a file elsewhere ("../").
    value = (_text(node, "Fingerprint") or "").strip().upper()
    if value and not _THUMBPRINT.fullmatch(value):
        raise OvfError(f"{source}: {where}/Fingerprint {value[:80]!r} is not a hexadecimal "
                       "certificate thumbprint")
    return value or None


def _plain(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]
