"""Input strategies: mutations of real documents, and documents built from the grammars.

Structure-aware generation reaches past the first check of a parser (a real root element,
the fields it requires, consistent names) and then varies types, counts and values;
`mutated` then damages bytes the way a truncated download or a broken disk does, with
tokens of the format so that the damage is often still well-formed enough to go deep.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from hypothesis import strategies as st

from tests.support.fixtures import FIXTURES

# -- seeds ----------------------------------------------------------------------------------


def fixture_files(*patterns: str) -> list[bytes]:
    """The contents of the shared fixtures matching glob patterns (sorted, never empty)."""
    found = sorted({p for pattern in patterns for p in FIXTURES.glob(pattern) if p.is_file()})
    if not found:
        raise FileNotFoundError(f"no shared fixture matches {patterns} in {FIXTURES}")
    return [p.read_bytes() for p in found]


def fixture_path(relative: str) -> Path:
    return FIXTURES / relative


# -- byte mutation --------------------------------------------------------------------------

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x0D, 0x20, 0x22, 0x27, 0x3C,
                     0x3E, 0x26, 0x3D, 0x3B, 0x7B, 0x7D, 0x5B, 0x5D, 0x2C, 0x3A, 0x5C, 0xC3,
                     0xED, 0xEF)

XML_TOKENS = (b"<", b">", b"</", b"/>", b"&", b"&amp;", b"&#0;", b"&#x10FFFF;", b"&#xD800;",
              b"&#99999999999;", b"&lt;", b"<![CDATA[", b"]]>", b"<!--", b"-->", b"<?pi x?>",
              b"<!DOCTYPE x [<!ENTITY a 'b'>]>", b"<!ENTITY a SYSTEM 'file:///etc/passwd'>",
              b"&a;", b"<?xml version='1.0' encoding='utf-16'?>",
              b"<?xml version='1.0' encoding='latin-1'?>", b"<?xml version='1.0' encoding='x'?>",
              b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00", b"xmlns='urn:x'",
              b' xmlns:wa="http://schemas.microsoft.com/windowsazure"', b'"', b"'", b"=",
              b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"<UserPassword>", b"<a>" * 50,
              b"9" * 40, b"-1", b"\xc2\xb2")
JSON_TOKENS = (b"{", b"}", b"[", b"]", b",", b":", b'"', b'\\"', b"\\u0000", b"\\ud800",
               b"\\udfff", b"null", b"true", b"false", b"1e999", b"-0", b"NaN", b"Infinity",
               b"-Infinity", b"9" * 40, b"9" * 5000, b"[" * 3000, b"{\"a\":" * 200,
               b"\xef\xbb\xbf", b"\xff", b"\x00", b'"\xc2\xb2"', b"1.5", b"\"-1\"", b"\"\"")
TEXT_TOKENS = (b"=", b"#", b";", b"{", b"}", b"\n", b"\r\n", b'"', b"\\", b"\\777", b"\\\xc3\xa9",
               b"lease {", b"option ", b"option unknown-245 ", b"expire ", b"epoch ",
               b"never", b"routers ", b"..", b"/", b":", b",", b"y", b"n", b"None",
               b"\xc2\xb2", b"\xd9\xa1", b"-", b"99999999999999999999", b"0x", b"\x00",
               b"\xff", b"\xef\xbb\xbf", b" ")
HTTP_TOKENS = (b"\r\n", b"\n", b"HTTP/1.1 ", b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n\r\n",
               b"Content-Length: ", b"Transfer-Encoding: chunked\r\n", b"-1", b"0\r\n\r\n",
               b"ffffffffffffffff", b"-5", b"0x10", b";ext=1", b":", b" ", b"\xb2", b"\xff",
               b"\x00", b"2\xb20")


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, tokens: Sequence[bytes] = (),
            max_ops: int = 6) -> bytes:
    """`seed` with up to `max_ops` mutations: bit flips, interesting bytes, deletions,
    duplications, random insertions, format tokens, truncation."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(("flip", "byte", "delete", "duplicate", "insert", "token",
                                   "truncate", "swap")))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and at < len(data):
            data[at] = draw(st.sampled_from(INTERESTING_BYTES))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "duplicate":
            piece = data[at:at + draw(st.integers(1, 256))]
            data[at:at] = piece * draw(st.integers(1, 4))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "token" and tokens:
            data[at:at] = draw(st.sampled_from(tokens))
        elif op == "truncate":
            del data[at:]
        elif op == "swap" and len(data) > 1:
            other = draw(st.integers(0, len(data) - 1))
            data[at:at + 8], data[other:other + 8] = data[other:other + 8], data[at:at + 8]
    return bytes(data)


def mutations_of(seeds: Sequence[bytes], tokens: Sequence[bytes] = (),
                 max_ops: int = 6) -> st.SearchStrategy[bytes]:
    """A fixture chosen among `seeds`, then mutated."""
    return st.sampled_from(list(seeds)).flatmap(lambda s: mutated(s, tokens, max_ops))


# -- values ---------------------------------------------------------------------------------

# Texts that parsers turn into numbers, booleans, states, versions and paths.
TRICKY_TEXT = ("", " ", "0", "1", "-1", "--1", "-", "+1", "1_0", "²", "١٢", "1.5", "1e3",
               "9" * 25, "9" * 5000, "true", "false", "TRUE", "True ", "yes", "y", "n",
               "None", "null", "enabled", "disabled", "uninstall", "Enabled", "PageBlob",
               "pageblob", "BlockBlob", "1.0", "1.0.0", "1..0", "1.0-", ".", "..", "../x",
               "/abs", "a/../b", "/var/lib/waagent", "é", "\u202e", "x" * 300, "{}", "[]",
               "Prod", "Test", "MultipleExtensionsPerHandler", "UpdateWithInstall")


def tricky_text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(TRICKY_TEXT), st.text(max_size=12))


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value (floats include inf and nan: Python's json writes and reads them)."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                        tricky_text())
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(tricky_text(), inner, max_size=4)),
        max_leaves=max_leaves)


def shaped(fields: Mapping[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with the grammar's keys, each absent, plausible, or of any type."""
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, plausible in fields.items():
            choice = draw(st.integers(0, 9))
            if choice < 2:
                continue
            out[key] = draw(json_values(4)) if choice == 9 else draw(plausible)
        if draw(st.integers(0, 9)) == 0:
            out[draw(tricky_text())] = draw(json_values(4))
        return out
    return build()


def json_text(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- XML from a grammar ---------------------------------------------------------------------

# A grammar maps an element name to (its attributes, its children's grammars) or, for a
# leaf, to (its attributes, a strategy of its text).
Grammar = tuple[tuple[str, ...], Any]


def leaf(*attributes: str, text: st.SearchStrategy[str] | None = None) -> Grammar:
    return attributes, text if text is not None else tricky_text()


def node(*attributes: str, **children: Grammar) -> Grammar:
    return attributes, dict(children)


@st.composite
def xml_element(draw: st.DrawFn, name: str, grammar: Grammar, namespace: str = "",
                attribute_values: st.SearchStrategy[str] | None = None,
                depth: int = 0) -> str:
    """An element of the grammar: each child absent, once (mostly) or twice; texts and
    attributes plausible or odd; now and then unescaped text or a stranger element."""
    attributes, body = grammar
    values = attribute_values if attribute_values is not None else tricky_text()
    attrs = "".join(f" {a}={quoteattr(draw(values))}" for a in attributes
                    if draw(st.integers(0, 5)) > 0)
    if namespace and depth == 0:
        attrs += f' xmlns="{namespace}"'
    if isinstance(body, dict):
        parts = []
        for child, child_grammar in body.items():
            copies = draw(st.sampled_from((0, 1, 1, 1, 1, 2)))
            parts += [draw(xml_element(child, child_grammar, namespace, attribute_values,
                                       depth + 1)) for _ in range(copies)]
        if draw(st.integers(0, 15)) == 0:
            parts.insert(draw(st.integers(0, len(parts))), f"<{draw(st.sampled_from(('x', 'Plugin', 'a:b')))}/>")
        content = "".join(parts)
    else:
        text = draw(body)
        content = text if draw(st.integers(0, 20)) == 0 else escape(text)
    return f"<{name}{attrs}>{content}</{name}>"


@st.composite
def xml_document(draw: st.DrawFn, name: str, grammar: Grammar, namespace: str = "",
                 attribute_values: st.SearchStrategy[str] | None = None) -> bytes:
    """A whole document: declaration and encoding chosen among what the platform sends."""
    body = draw(xml_element(name, grammar, namespace, attribute_values))
    encoding = draw(st.sampled_from(("utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1",
                                     "none")))
    if encoding == "none":
        return body.encode("utf-8")
    declared = {"utf-8-sig": "utf-8"}.get(encoding, encoding)
    text = f'<?xml version="1.0" encoding="{declared}"?>\n{body}'
    return text.encode(encoding, errors="replace")
