"""ovf-env.xml: facts/ovf.py (parse_ovf_env, and without_password, which keeps the copy)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facts.ovf import (
    _PASSWORD_START_BYTES,
    OVF_NS,
    WA_NS,
    OvfError,
    _without_elements,
    parse_ovf_env,
    without_password,
)
from tests.campaigns.harness import campaign, holds
from tests.campaigns.strategies import (
    XML_TOKENS,
    fixture_files,
    leaf,
    mutated,
    mutations_of,
    node,
    tricky_text,
    xml_document,
)

pytestmark = pytest.mark.campaign

SEEDS = fixture_files("walinuxagent/ovf-env*.xml", "cloudinit/ovf/*.xml")

KEY_PATHS = st.one_of(tricky_text(), st.sampled_from(
    ["/home/azureuser/.ssh/authorized_keys", "/home/a/../../etc/shadow", "/x\0y", "rel/path"]))
KEY = node(Fingerprint=leaf(), Path=leaf(text=KEY_PATHS), Value=leaf())
PROVISIONING = node(
    ConfigurationSetType=leaf(text=st.sampled_from(["LinuxProvisioningConfiguration", "x", ""])),
    HostName=leaf(), UserName=leaf(), UserPassword=leaf(), CustomData=leaf(),
    DisableSshPasswordAuthentication=leaf(),
    SSH=node(PublicKeys=node(PublicKey=KEY), KeyPairs=node(KeyPair=KEY)))
ENVIRONMENT = node(
    ProvisioningSection=node(Version=leaf(), LinuxProvisioningConfigurationSet=PROVISIONING),
    PlatformSettingsSection=node(PlatformSettings=node(
        KmsServerHostname=leaf(), ProvisionGuestAgent=leaf(), PreprovisionedVm=leaf(),
        PreprovisionedVMType=leaf())))


@st.composite
def ovf_document(draw: st.DrawFn) -> bytes:
    """The grammar of PLATFORM.md section 4; the wa: elements in their namespace."""
    body = draw(xml_document("Environment", ENVIRONMENT, WA_NS))
    # The root element is in the OVF namespace, everything below in the Windows Azure one.
    body = body.replace(f'<Environment xmlns="{WA_NS}">'.encode(),
                        f'<Environment xmlns="{OVF_NS}"><wa:x xmlns:wa="{WA_NS}"/>'.encode(), 1)
    body = body.replace(b"<ProvisioningSection>",
                        f'<ProvisioningSection xmlns="{WA_NS}">'.encode())
    body = body.replace(b"<PlatformSettingsSection>",
                        f'<PlatformSettingsSection xmlns="{WA_NS}">'.encode())
    return draw(mutated(body, XML_TOKENS, max_ops=2))


def _parse(data: bytes) -> None:
    env = parse_ovf_env(data, source="ovf-env.xml")
    repr(env)
    env.public_facts()
    copy = without_password(data)
    assert parse_ovf_env(copy).password is None


@campaign(1.5)
@given(ovf_document())
def test_ovf_grammar(data: bytes) -> None:
    holds("ovf", lambda: _parse(data), (OvfError,), size=len(data))


@campaign(1.5)
@given(mutations_of(SEEDS, XML_TOKENS))
def test_ovf_fixtures_mutated(data: bytes) -> None:
    holds("ovf", lambda: _parse(data), (OvfError,), size=len(data))


# The pattern without_password used before it scanned in one pass: same elements removed.
_OLD_PATTERN = re.compile(rb"<(?P<tag>(?:[A-Za-z_][\w.-]*:)?UserPassword)\b[^>]*?"
                          rb"(?:/>|>.*?</(?P=tag)\s*>)", re.DOTALL)
PIECES = st.sampled_from([b"<UserPassword>", b"</UserPassword>", b"<wa:UserPassword a='>'>",
                          b"</wa:UserPassword >", b"<UserPassword/>", b"<UserPasswordX>", b">",
                          b"/", b"<", b"x", b"<![CDATA[", b"]]>", b"<wa:UserPassword",
                          b"</UserPassword"])


@campaign(1)
@given(st.lists(PIECES, max_size=12).map(b"".join))
def test_ovf_password_removal_matches_the_pattern(data: bytes) -> None:
    """The one-pass removal removes exactly what the pattern removed."""
    expected = _OLD_PATTERN.sub(b"", data)
    found = holds("ovf", lambda: _without_elements(data.decode("latin-1"),
                                                     _PASSWORD_START_BYTES).encode("latin-1"))
    assert found == expected


@campaign(0.1)
@given(st.sampled_from(SEEDS), st.sampled_from([b"<![CDATA[", b"<!--"]),
       st.integers(1000, 60000))
def test_ovf_many_unclosed_password_tags(seed: bytes, opener: bytes, count: int) -> None:
    """A custom data or comment full of `<UserPassword>` that never closes: the copy
    without the password is still made in bounded time."""
    closer = b"]]>" if opener == b"<![CDATA[" else b"-->"
    filler = opener + b"<UserPassword>" * count + closer
    if opener == b"<![CDATA[" and b"</CustomData>" in seed:
        data = seed.replace(b"</CustomData>", filler + b"</CustomData>", 1)
    else:
        data = seed.replace(b"</Environment>", b"<!--" + b"<UserPassword>" * count
                            + b"--></Environment>", 1)
    holds("ovf", lambda: _parse(data), (OvfError,), size=len(data), seconds=2)
