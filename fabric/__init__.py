"""The fabric emulator: the Azure platform side (WireServer, HostGAPlugin, IMDS, provisioning media).

It never imports the agent's code: it builds the platform's documents itself,
so a misunderstanding shared by both sides cannot pass unnoticed.
"""

from fabric.documents import render_ovf
from fabric.media import build_media, read_ovf_from_media
from fabric.record import Record
from fabric.scenario import (
    ROUTES,
    Certificate,
    Extension,
    Fault,
    KeyPair,
    Scenario,
    ScenarioError,
    SshKey,
    default_scenario,
    default_scenario_path,
    load_scenario,
    parse_scenario,
)
from fabric.server import Fabric

__all__ = [
    "ROUTES", "Certificate", "Extension", "Fabric", "Fault", "KeyPair", "Record", "Scenario",
    "ScenarioError", "SshKey", "build_media", "default_scenario", "default_scenario_path",
    "load_scenario", "parse_scenario", "read_ovf_from_media", "render_ovf",
]
