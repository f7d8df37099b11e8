"""waagent.conf: conf/config.py and the option table of conf/options.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conf.config import ConfigError, parse_config
from conf.options import OPTIONS
from tests.campaigns.harness import campaign, holds
from tests.campaigns.strategies import TEXT_TOKENS, fixture_files, mutations_of, tricky_text

pytestmark = pytest.mark.campaign

SEEDS = fixture_files("walinuxagent/test_waagent.conf", "walinuxagent/config/*.conf")

VALUES = st.one_of(tricky_text(), st.integers().map(str),
                   st.sampled_from(["y", "n", "/tmp/x", '"quoted"', " 5 ", "5 # comment",
                                    "ext4", "auto", "0777", "-0", "\t"]))


@st.composite
def conf_text(draw: st.DrawFn) -> str:
    """Lines of the real grammar: real option names in any case, values of any kind,
    comments, blank and broken lines."""
    lines = []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append("# " + draw(st.text(max_size=10)))
        elif kind == 1:
            lines.append(draw(st.text(max_size=20)))
        else:
            name = draw(st.sampled_from(sorted(OPTIONS)))
            if draw(st.booleans()):
                name = draw(st.sampled_from((name.lower(), name.upper(), f" {name} ")))
            separator = draw(st.sampled_from(("=", " = ", "==", "=\t")))
            lines.append(f"{name}{separator}{draw(VALUES)}")
    return draw(st.sampled_from(("\n", "\r\n", "\r"))).join(lines)


def _parse(text: str) -> None:
    config = parse_config(text, "waagent.conf")
    # Every typed accessor works on what the parser accepted.
    for name, value in config.items():
        assert value is None or isinstance(value, bool | int | str), (name, value)
        config.source(name)
    config.fingerprint(list(OPTIONS))


@campaign(1)
@given(conf_text())
def test_conf_grammar(text: str) -> None:
    holds("conf", lambda: _parse(text), (ConfigError,), size=len(text))


@campaign(1)
@given(mutations_of(SEEDS, TEXT_TOKENS))
def test_conf_fixtures_mutated(data: bytes) -> None:
    # As load_config reads the file.
    text = data.decode("utf-8", errors="replace")
    holds("conf", lambda: _parse(text), (ConfigError,), size=len(data))
