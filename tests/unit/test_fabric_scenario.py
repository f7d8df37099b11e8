"""The fabric's scenario files: typed model, errors with key and line, deterministic keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fabric import Fabric, ScenarioError, default_scenario, load_scenario, parse_scenario
from fabric.keys import openssh_public_key, thumbprint

MINIMAL = "username: alice\n"


def error_of(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, source="s.yaml")
    return caught.value


def test_default_scenario_is_the_demo_vm() -> None:
    s = default_scenario()
    assert (s.hostname, s.username) == ("demo-vm", "azureuser")
    assert s.password
    assert s.custom_data
    assert [k.as_certificate for k in s.ssh_keys] == [False, True]
    assert len(s.key_pairs) == 1
    assert s.extensions and s.extensions[0].protected_settings


def test_minimal_scenario_fills_stable_ids() -> None:
    a = parse_scenario(MINIMAL)
    b = parse_scenario(MINIMAL)
    assert a.vm_id == b.vm_id and a.container_id == b.container_id
    assert a.instance_id.startswith(a.vm_id)
    assert a.incarnation == 1 and a.provision_guest_agent


def test_all_keys_load_with_their_types(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    text = """
hostname: vm-1
username: bob
password: "123456"
seed: s1
custom_data: "#cloud-config"
disable_ssh_password_authentication: true
provision_guest_agent: false
vm_id: 11111111-2222-3333-4444-555555555555
container_id: c-1
instance_id: i-1
incarnation: 7
location: eastus
certificates:
  - name: extra
extensions:
  - name: A.B
    version: 1.10
    package: pkg
    state: disabled
    seq_no: 3
    public_settings: {a: [1, 2]}
    protected_settings: {p: 1}
    certificate: extra
resource_disk_size_mb: 2048
imds: {compute: {zone: "1"}}
vm_settings: false
faults:
  - {route: goalstate, status: 503, count: 2, skip: 1, delay: 0.5}
"""
    path = tmp_path / "s.yaml"
    path.write_text(text)
    s = load_scenario(path)
    assert s.password == "123456"  # the text as written, not the int 123456
    assert s.extensions[0].version == "1.10"  # not the float 1.1
    assert s.extensions[0].public_settings == {"a": [1, 2]}
    assert s.package_path(s.extensions[0]) == tmp_path / "pkg"
    assert s.faults[0].status == 503 and s.faults[0].delay == 0.5
    assert s.imds == {"compute": {"zone": "1"}}
    assert s.incarnation == 7 and s.disable_ssh_password_authentication


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ("username: a\nhostnme: b\n", "hostnme", 2, "unknown key"),
        ("username: a\nincarnation: two\n", "incarnation", 2, "integer"),
        ("username: a\nprovision_guest_agent: yes please\n", "provision_guest_agent", 2, "true or false"),
        ("hostname: x\n", "username", 1, "missing"),
        ("username: a\nextensions:\n  - name: X\n    stat: enabled\n", "extensions[0].stat", 4, "unknown key"),
        ("username: a\nextensions:\n  - name: X\n    state: on\n", "extensions[0].state", 4, "enabled"),
        ("username: a\nssh_keys: ssh-rsa AAA\n", "ssh_keys", 2, "list"),
        ("username: a\nssh_keys:\n  - value: not a key\n", "ssh_keys[0].value", 3, "OpenSSH"),
        ("username: a\nfaults:\n  - route: nowhere\n", "faults[0].route", 3, "unknown route"),
        ("username: a\nextensions:\n  - {name: X, certificate: nope}\n", "extensions[0].certificate", 3, "nope"),
        ("username: a\nusername: b\n", "username", 2, "twice"),
    ],
)
def test_errors_name_key_and_line(text: str, key: str, line: int, words: str) -> None:
    error = error_of(text)
    assert (error.key, error.line) == (key, line)
    assert words in str(error)
    assert str(error).startswith(f"s.yaml:{line}: ")


def test_yaml_syntax_error_has_a_line() -> None:
    error = error_of("username: a\n  x: [\n")
    assert error.line == 2
    assert "YAML syntax error" in str(error)


def test_not_a_mapping_and_empty_file() -> None:
    assert "mapping" in str(error_of("- a\n- b\n"))
    assert error_of("").key == "username"


def test_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "absent.yaml")


def test_generated_material_is_deterministic_and_consistent() -> None:
    a, b = default_scenario(), default_scenario()
    assert a.thumbprints() == b.thumbprints()
    assert len(set(a.thumbprints())) == 3  # ssh cert, key pair, extensions cert
    # The ssh private key is the pair of the public key in the OVF.
    private = serialization.load_ssh_private_key(a.ssh_private_key_pem(0).encode(), password=None)
    public_line = openssh_public_key(private.public_key())  # type: ignore[arg-type]
    assert a.ssh_public_key(0).startswith(public_line)
    # The key pair's private key belongs to its certificate.
    cert = a.key_pair_certificate(0)
    assert cert.public_key().public_numbers() == a.key_pair_private_key(0).public_key().public_numbers()  # type: ignore[union-attr]
    assert thumbprint(cert) in a.thumbprints()
    # The certificate-delivered ssh key is the generated RSA key.
    assert a.ssh_key_certificate(1).public_key().public_numbers() == serialization.load_ssh_private_key(  # type: ignore[union-attr]
        a.ssh_private_key_pem(1).encode(), password=None
    ).public_key().public_numbers()  # type: ignore[union-attr]


def test_given_ssh_key_has_no_private_half_and_certificate_by_issuer() -> None:
    rsa_line = default_scenario().ssh_public_key(1).split()[0:2]
    s = parse_scenario(
        f"username: a\nssh_keys:\n  - value: {' '.join(rsa_line)}\n    as_certificate: true\n"
    )
    with pytest.raises(ScenarioError):
        s.ssh_private_key_pem(0)
    cert = s.ssh_key_certificate(0)
    assert cert.issuer.rfc4514_string() == "CN=fabric-issuer"
    assert s.ssh_public_key(0) == " ".join(rsa_line)


def test_given_pem_certificate_is_delivered_as_is() -> None:
    donor = default_scenario()
    pem = donor.key_pair_certificate(0).public_bytes(serialization.Encoding.PEM).decode()
    key = donor.key_pair_private_key_pem(0)
    indent = lambda t: "\n".join("      " + line for line in t.splitlines())  # noqa: E731
    s = parse_scenario(f"username: a\ncertificates:\n  - name: given\n    cert_pem: |\n{indent(pem)}\n"
                       f"    key_pem: |\n{indent(key)}\n")
    assert s.thumbprints() == [thumbprint(donor.key_pair_certificate(0))]
    assert s.delivered()[0].key is not None


def test_fabric_exposes_the_scenario() -> None:
    fabric = Fabric(default_scenario())
    assert fabric.scenario is not None
    assert fabric.scenario.password == "Demo-Passw0rd!"
