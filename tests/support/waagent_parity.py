"""How `waagent -show-configuration` output is compared with waagent 2.7.3's.

Ours must print every line waagent prints, in its order (both sort by name), with the
same value. Besides those lines it may print only the options in NOT_IN_2_7_3.
"""

from __future__ import annotations

from pathlib import Path

# What Debian's waagent 2.7.3 printed for each conf file there (tests/integration/
# test_waagent_parity.py checks these captures against the real binary).
CAPTURES = Path(__file__).resolve().parents[1] / "data" / "waagent-2.7.3"

# Options this agent shows that waagent 2.7.3 does not, and why they stay.
NOT_IN_2_7_3 = frozenset({
    # Newer agents' options (2.9-2.12), read here for forward compatibility.
    "AutoUpdate.UpdateToLatestVersion",
    "Extensions.WaitForCloudInit",
    "Extensions.WaitForCloudInitTimeout",
    "Debug.EnableExtensionPolicy",
    "Debug.EnableSignatureValidation",
    # Older agents' options that distribution confs still carry and this agent reads.
    "Provisioning.Enabled",
    "Provisioning.UseCloudInit",
    "LBProbeResponder",
    "Protocol.EndpointDiscovery",
})

# Values that still differ when a conf leaves the option out, and why. waagent 2.7.3's
# code default is n; this agent's stays y until the test harnesses' confs (which rely on
# it for sandbox roots without host keys) say y themselves.
KNOWN_DIFFERENCES: dict[str, tuple[str, str]] = {}


def key(line: str) -> str:
    """The option name of a `Name = value` line."""
    return line.split(" = ", 1)[0]


def differences(ours: list[str], theirs: list[str]) -> list[str]:
    """What keeps our output from being waagent's, one message a problem (empty: none)."""
    mine = {key(line): line for line in ours}
    problems = []
    for line in theirs:
        name = key(line)
        if name not in mine:
            problems.append(f"missing: {line}")
        elif mine[name] != line:
            known = KNOWN_DIFFERENCES.get(name)
            if known is None or (line, mine[name]) != tuple(f"{name} = {v}" for v in known):
                problems.append(f"differs: waagent {line!r}, ours {mine[name]!r}")
    their_keys = {key(line) for line in theirs}
    shared = [key(line) for line in ours if key(line) in their_keys]
    if shared != [key(line) for line in theirs if key(line) in mine]:
        problems.append("order differs from waagent's (sorted by name)")
    problems += [f"not in waagent 2.7.3: {mine[name]}"
                 for name in sorted(set(mine) - their_keys - NOT_IN_2_7_3)]
    return problems
