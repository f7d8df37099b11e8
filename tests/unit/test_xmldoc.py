"""wire.xmldoc: the expat-based parser agrees with ElementTree and refuses every DTD feature."""

from __future__ import annotations

import pyexpat
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import FIXTURES
from wire import xmldoc
from wire.errors import DocumentError
from wire.xmldoc import (
    MAX_DOCUMENT_BYTES,
    DoctypeRefused,
    EntityRefused,
    Refused,
    XmlError,
    parse,
    parse_xml,
)

REPO = Path(__file__).resolve().parents[2]
XML_FIXTURES = sorted(FIXTURES.rglob("*.xml"))


def shape(element: Any) -> tuple[Any, ...]:
    """Everything ElementTree would show of a tree, for ours and theirs alike."""
    return (element.tag, dict(element.attrib), element.text, element.tail,
            [shape(item) for item in element])


def test_there_are_fixtures_to_compare() -> None:
    # Wire-server documents and ovf-env files from walinuxagent, cloud-init and azure-init.
    assert len(XML_FIXTURES) >= 100
    assert any(p.name == "ovf-env.xml" for p in XML_FIXTURES)
    assert any(p.name == "ExtensionsConfig.xml" for p in XML_FIXTURES)


@pytest.mark.parametrize("path", XML_FIXTURES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_fixture_parses_like_elementtree(path: Path) -> None:
    data = path.read_bytes()
    theirs = ET.fromstring(data)
    ours = parse(data)
    assert shape(ours) == shape(theirs)
    assert [e.tag for e in ours.iter()] == [e.tag for e in theirs.iter()]
    # The str path (declaration dropped, text already decoded) gives the same tree.
    assert shape(parse_xml(data.decode("utf-8-sig"), path.name)) == shape(theirs)


@pytest.mark.parametrize("text", [
    # default namespace, prefixes, a redeclared prefix, an unprefixed attribute
    b'<r xmlns="urn:d" xmlns:p="urn:p"><p:a x="1"><b/></p:a>'
    b'<p:c xmlns:p="urn:q"/><e xmlns=""/></r>',
    # namespaced attributes next to plain ones; xmlns declarations are not attributes
    b'<r xmlns:i="http://www.w3.org/2001/XMLSchema-instance" xmlns:w="urn:w">'
    b'<a i:nil="true" w:k="v" plain="p"/></r>',
    # CDATA, character and predefined entity references
    b"<r><a><![CDATA[<not> & a tag]]></a><b>&amp;&lt;&gt;&quot;&apos;&#x41;&#65;</b></r>",
    # mixed content: text, tails, comments and processing instructions dropped
    b"<r>\n  lead<a>in</a>tail<!-- c -->more<?pi data?>end<b/>\n</r>\n",
    # empty elements and whitespace-only text
    b"<r><a></a><b/><c> </c></r>",
    # whitespace and comments outside the root are not part of the tree
    b"<!-- before -->\n<r/>\n<!-- after -->\n",
    # attribute value normalisation and references inside attributes
    b'<r a="x&#10;y" b="1 &amp; 2" c="tab\there"/>',
    # non-ASCII text
    "<r>Größe: 10 µm – ✓</r>".encode(),
])
def test_documents_parse_like_elementtree(text: bytes) -> None:
    assert shape(parse(text)) == shape(ET.fromstring(text))


def test_namespaced_names_are_spelled_like_elementtree() -> None:
    root = parse(b'<p:r xmlns:p="http://x/ns" xmlns:q="urn:q" q:a="1" b="2"><c/></p:r>')
    assert root.tag == "{http://x/ns}r"
    assert root.attrib == {"{urn:q}a": "1", "b": "2"}
    assert [child.tag for child in root] == ["c"]


def test_text_is_joined_across_buffers_and_cdata() -> None:
    body = "x" * 100_000
    root = parse(f"<r>{body}<![CDATA[&]]>{body}<a/>{body}</r>".encode())
    assert root.text == body + "&" + body
    assert root.children[0].tail == body


def test_element_access() -> None:
    root = parse(b"<r><a i='1'><b i='1'/><b i='2'/></a><x/><a i='2'><b i='3'/></a>"
                 b"<a i='3'/></r>")
    theirs = ET.fromstring(b"<r><a i='1'><b i='1'/><b i='2'/></a><x/><a i='2'><b i='3'/></a>"
                           b"<a i='3'/></r>")
    assert len(root) == len(theirs) == 4
    assert [c.attrib["i"] for c in root.findall("a")] == ["1", "2", "3"]
    assert [c.attrib["i"] for c in root.findall("a/b")] \
        == [c.attrib["i"] for c in theirs.findall("a/b")] == ["1", "2", "3"]
    found = root.find("a/b")
    assert found is not None and found.attrib["i"] == "1"
    assert root.find("a/c") is None and root.findall("b") == []
    assert [e.tag for e in root.iter()] == [e.tag for e in theirs.iter()]


def test_find_takes_namespaced_paths_whose_uris_hold_slashes() -> None:
    ovf = FIXTURES / "walinuxagent" / "ovf-env.xml"
    wa = "{http://schemas.microsoft.com/windowsazure}"
    path = f"{wa}ProvisioningSection/{wa}LinuxProvisioningConfigurationSet/{wa}UserName"
    ours, theirs = parse(ovf.read_bytes()), ET.fromstring(ovf.read_bytes())
    found, expected = ours.find(path), theirs.find(path)
    assert found is not None and expected is not None and found.text == expected.text
    keys = f"{wa}ProvisioningSection/{wa}LinuxProvisioningConfigurationSet/{wa}SSH/" \
           f"{wa}PublicKeys/{wa}PublicKey"
    assert [shape(e) for e in ours.findall(keys)] == [shape(e) for e in theirs.findall(keys)]
    assert ours.findall(keys)


def test_deep_nesting_needs_no_recursion() -> None:
    depth = 50_000
    root = parse(b"<a>" * depth + b"</a>" * depth)
    assert sum(1 for _ in root.iter()) == depth


# -- encodings ------------------------------------------------------------------------------

def test_utf8_bom_in_bytes_and_str() -> None:
    assert parse(b"\xef\xbb\xbf<a>x</a>").text == "x"
    assert parse_xml("\ufeff<a>x</a>", "Doc").text == "x"
    assert parse_xml(b"\xef\xbb\xbf<?xml version='1.0'?><a>x</a>", "Doc").text == "x"


def test_utf16_bytes_are_read_by_their_bom() -> None:
    data = '<?xml version="1.0" encoding="utf-16"?><a>é</a>'.encode("utf-16")
    assert parse(data).text == "é" == ET.fromstring(data).text


def test_bytes_follow_their_encoding_declaration() -> None:
    data = b'<?xml version="1.0" encoding="iso-8859-1"?><a>caf\xe9</a>'
    assert parse(data).text == "café" == ET.fromstring(data).text
    assert parse_xml(data, "Doc").text == "café"


def test_str_is_already_decoded_whatever_its_declaration_says() -> None:
    for encoding in ("iso-8859-1", "utf-16", "utf-8"):
        text = f'<?xml version="1.0" encoding="{encoding}"?>\n<a>café</a>'
        assert parse_xml(text, "Doc").text == "café"


@pytest.mark.parametrize("encoding", ["no-such-codec", "zlib", "shift_jis"])
def test_an_unsupported_encoding_is_an_xml_error(encoding: str) -> None:
    with pytest.raises(XmlError, match="unsupported encoding") as caught:
        parse(f'<?xml version="1.0" encoding="{encoding}"?><a/>'.encode())
    assert encoding not in str(caught.value)
    with pytest.raises(DocumentError, match="Doc: not well-formed XML: unsupported encoding"):
        parse_xml(f'<?xml version="1.0" encoding="{encoding}"?><a/>'.encode(), "Doc")


def test_invalid_utf8_is_not_well_formed() -> None:
    with pytest.raises(XmlError, match=r"not well-formed \(invalid token\): line 1, column 3"):
        parse(b"<a>\xff</a>")


# -- hostile input --------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<r>&lol3;</r>"""
EXTERNAL_ENTITY = b"""<!DOCTYPE r [<!ENTITY ext SYSTEM "file:///etc/passwd">]><r>&ext;</r>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://example.invalid/r.dtd"><r/>"""
PARAMETER_ENTITY = (b'<!DOCTYPE r [<!ENTITY % p SYSTEM "http://example.invalid/p.dtd"> %p;]>'
                    b"<r/>")
UNPARSED_ENTITY = (b'<!DOCTYPE r [<!NOTATION n SYSTEM "urn:n">'
                   b'<!ENTITY u SYSTEM "http://example.invalid/u" NDATA n>]><r a="u"/>')
BARE_DOCTYPE = b"<!DOCTYPE r><r/>"
HOSTILE = [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD, PARAMETER_ENTITY, UNPARSED_ENTITY,
           BARE_DOCTYPE]


@pytest.mark.parametrize("text", HOSTILE)
def test_any_doctype_is_refused(text: bytes) -> None:
    with pytest.raises(DoctypeRefused, match="^a DOCTYPE is not allowed$"):
        parse(text)
    with pytest.raises(DocumentError, match="^GoalState: refused: a DOCTYPE is not allowed"):
        parse_xml(text, "GoalState")
    with pytest.raises(DocumentError, match="GoalState: refused"):
        parse_xml(text.decode(), "GoalState")


def _without(*handlers: str) -> tuple[pyexpat.XMLParserType, xmldoc._Builder]:
    """Our parser with some refusals switched off, to show each layer refuses on its own."""
    builder = xmldoc._Builder()
    parser = xmldoc._parser(builder)
    for name in handlers:
        setattr(parser, name, None)
    return parser, builder


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY, UNPARSED_ENTITY])
def test_entity_declarations_are_refused_past_the_doctype(text: bytes) -> None:
    parser, _ = _without("StartDoctypeDeclHandler")
    with pytest.raises(EntityRefused, match="^entity declarations are not allowed$"):
        parser.Parse(text, True)


def test_unparsed_entities_are_refused_without_the_general_entity_handler() -> None:
    parser, _ = _without("StartDoctypeDeclHandler", "EntityDeclHandler")
    with pytest.raises(EntityRefused):
        parser.Parse(UNPARSED_ENTITY, True)


def test_external_entity_references_are_refused_past_their_declaration() -> None:
    parser, _ = _without("StartDoctypeDeclHandler", "EntityDeclHandler")
    with pytest.raises(EntityRefused):
        parser.Parse(EXTERNAL_ENTITY, True)


def test_parameter_entities_are_never_loaded() -> None:
    # With parameter entity parsing on, expat would ask for p.dtd through this handler.
    asked: list[object] = []
    parser, builder = _without("StartDoctypeDeclHandler", "EntityDeclHandler")

    def ask(*args: object) -> int:
        asked.append(args)
        return 1

    parser.ExternalEntityRefHandler = ask
    parser.Parse(PARAMETER_ENTITY, True)
    assert asked == [] and builder.root is not None


def test_refusals_are_xml_errors_and_distinguishable() -> None:
    assert issubclass(DoctypeRefused, Refused) and issubclass(EntityRefused, Refused)
    assert issubclass(Refused, XmlError)
    assert not issubclass(DoctypeRefused, EntityRefused)


def test_undeclared_entities_are_not_well_formed() -> None:
    with pytest.raises(XmlError, match="undefined entity: line 1, column 3"):
        parse(b"<a>&nbsp;</a>")


@pytest.mark.parametrize("text", [
    b"",
    b"<a><b></a>",
    b"<a>S3cret-Hunter2</b>",
    b"<a/><b/>",
    b"<p:a/>",
    b"<a x='1' x='2'/>",
    b"<a>\n  <b>S3cret-Hunter2\n</a",
    b"  <?xml version='1.0'?><a/>",
])
def test_malformed_input_names_expats_message_and_position(text: bytes) -> None:
    with pytest.raises(ET.ParseError) as expected:
        ET.fromstring(text)
    with pytest.raises(XmlError) as caught:
        parse(text)
    # Exactly ElementTree's message: expat's words and a line/column, no document text.
    assert str(caught.value) == str(expected.value)
    assert ": line " in str(caught.value) and ", column " in str(caught.value)
    assert "S3cret" not in str(caught.value)
    with pytest.raises(DocumentError, match="^OVF: not well-formed XML: .*line .*column") as doc:
        parse_xml(text, "OVF")
    assert "S3cret" not in str(doc.value)


# -- size -----------------------------------------------------------------------------------

def test_the_size_cap_comes_before_parsing() -> None:
    # Not even well-formed: the size alone decides.
    with pytest.raises(DocumentError, match=f"Doc: {MAX_DOCUMENT_BYTES + 1} bytes is larger"):
        parse_xml(b"<" * (MAX_DOCUMENT_BYTES + 1), "Doc")
    assert parse_xml(b"<a>" + b" " * (MAX_DOCUMENT_BYTES - 7) + b"</a>", "Doc").tag == "a"


def test_the_size_cap_counts_utf8_bytes_of_str() -> None:
    text = "<a>" + "é" * (MAX_DOCUMENT_BYTES // 2) + "</a>"
    assert len(text) < MAX_DOCUMENT_BYTES
    with pytest.raises(DocumentError, match="larger than"):
        parse_xml(text, "Doc")


# -- import cost ----------------------------------------------------------------------------

def test_parsing_imports_neither_elementtree_nor_defusedxml() -> None:
    ovf = FIXTURES / "walinuxagent" / "ovf-env.xml"
    goal_state = FIXTURES / "walinuxagent" / "wire" / "goal_state.xml"
    code = textwrap.dedent(f"""
        import sys
        from facts.ovf import parse_ovf_env
        from wire.documents import parse_goal_state
        parse_ovf_env(open({str(ovf)!r}, "rb").read())
        parse_goal_state(open({str(goal_state)!r}, "rb").read())
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("xml", "defusedxml")))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"
