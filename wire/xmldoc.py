"""Safe XML reading for platform documents: no DTD, no entities, bounded size, named errors.

The one home for parsing untrusted platform XML (WireServer documents, ovf-env.xml).
It is built directly on the C module pyexpat, which loads in a fraction of the time
xml.etree plus defusedxml take. Anything DTD-related (a DOCTYPE, entity
declarations, external entities, parameter entities) is refused outright, which is
stricter than defusedxml's defaults. Parsed documents are small trees of `Element`,
shaped like ElementTree's (`{uri}local` names, text, tail, attrib).
"""

from __future__ import annotations

import pyexpat
from typing import TYPE_CHECKING, NoReturn

from wire.errors import DocumentError

if TYPE_CHECKING:
    from collections.abc import Iterator

# The largest platform document seen (an ExtensionsConfig with signatures) is a few MB.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


class Element:
    """An XML element: the part of ElementTree's Element the agent uses."""

    __slots__ = ("tag", "attrib", "text", "tail", "children")

    def __init__(self, tag: str, attrib: dict[str, str]) -> None:
        self.tag = tag
        self.attrib = attrib
        # As in ElementTree: character data before the first child / after the end tag,
        # None when there is none.
        self.text: str | None = None
        self.tail: str | None = None
        self.children: list[Element] = []

    def __repr__(self) -> str:
        return f"<Element {self.tag!r} with {len(self.children)} children>"

    def __iter__(self) -> Iterator[Element]:
        return iter(self.children)

    def __len__(self) -> int:
        # As in ElementTree, a leaf is falsy: test elements with `is None`.
        return len(self.children)

    def iter(self) -> Iterator[Element]:
        """This element and all below it, depth first in document order."""
        # A stack, not recursion: a deeply nested document must not hit the recursion limit.
        stack = [self]
        while stack:
            element = stack.pop()
            yield element
            stack.extend(reversed(element.children))

    def findall(self, path: str) -> list[Element]:
        """Elements at a `/`-separated path of exact tags (`{uri}local` or plain) below this."""
        found = [self]
        for tag in _steps(path):
            found = [item for parent in found for item in parent.children if item.tag == tag]
        return found

    def find(self, path: str) -> Element | None:
        """The first element at a path of exact tags, or None."""
        found = self.findall(path)
        return found[0] if found else None


def _steps(path: str) -> list[str]:
    """A path split at `/`, but not inside `{uri}` (namespace URIs hold slashes)."""
    steps: list[str] = []
    rest = path
    while True:
        start = rest.find("}") + 1 if rest.startswith("{") else 0
        slash = rest.find("/", start)
        if slash == -1:
            steps.append(rest)
            return steps
        steps.append(rest[:slash])
        rest = rest[slash + 1:]


class XmlError(Exception):
    """Not well-formed XML: expat's message and position, never document text."""


class Refused(XmlError):
    """The document uses a DTD feature; platform documents never need one."""


class DoctypeRefused(Refused):
    """A `<!DOCTYPE`: refused before anything inside it is read."""

    def __init__(self) -> None:
        super().__init__("a DOCTYPE is not allowed")


class EntityRefused(Refused):
    """An entity declaration or external entity reference.

    Any of them needs a DOCTYPE, which is refused first: this layer is kept so that
    each refusal holds on its own.
    """

    def __init__(self) -> None:
        super().__init__("entity declarations are not allowed")


def _refuse_doctype(*_: object) -> NoReturn:
    raise DoctypeRefused()


def _refuse_entity(*_: object) -> NoReturn:
    raise EntityRefused()


class _Builder:
    """Builds the tree from expat's callbacks the way ElementTree's TreeBuilder does."""

    def __init__(self) -> None:
        self.root: Element | None = None
        self.open: list[Element] = []
        self.last: Element | None = None  # the element pending character data belongs to
        self.is_tail = False  # ... as its tail (after its end tag) or as its text
        self.data: list[str] = []

    def start(self, name: str, attrs: dict[str, str]) -> None:
        self.flush()
        element = Element(_tag(name), {_tag(key): value for key, value in attrs.items()})
        if self.open:
            self.open[-1].children.append(element)
        else:
            self.root = element
        self.open.append(element)
        self.last, self.is_tail = element, False

    def end(self, _name: str) -> None:
        self.flush()
        self.last, self.is_tail = self.open.pop(), True

    def flush(self) -> None:
        # Comments and processing instructions are dropped, so text around them joins up.
        if self.data and self.last is not None:
            if self.is_tail:
                self.last.tail = "".join(self.data)
            else:
                self.last.text = "".join(self.data)
        self.data.clear()  # in place: expat appends to this very list


def _tag(name: str) -> str:
    # expat reports a namespaced name as `uri}local`; ElementTree spells it `{uri}local`.
    return "{" + name if "}" in name else name


def _parser(builder: _Builder) -> pyexpat.XMLParserType:
    """An expat parser that feeds `builder` and refuses every DTD feature."""
    parser = pyexpat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data.append
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_entity
    parser.UnparsedEntityDeclHandler = _refuse_entity
    parser.ExternalEntityRefHandler = _refuse_entity
    parser.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
    return parser


def parse(data: bytes) -> Element:
    """The root element of an XML document; expat reads the BOM and encoding declaration.

    Raises DoctypeRefused / EntityRefused for DTD features and XmlError when not
    well-formed. Callers cap the size first (parse_xml does).
    """
    builder = _Builder()
    parser = _parser(builder)
    try:
        parser.Parse(data, True)
    except pyexpat.ExpatError as err:
        raise XmlError(f"{pyexpat.ErrorString(err.code)}: line {err.lineno}, "
                       f"column {err.offset}") from None
    except (LookupError, ValueError):
        # pyexpat asks Python's codecs for an encoding it does not know: an unknown or
        # multi-byte one fails there. The name is document text, so it is not repeated.
        raise XmlError("unsupported encoding in the XML declaration") from None
    if builder.root is None:  # expat already fails on this; not left to an assert
        raise XmlError("no element found")
    return builder.root


def parse_xml(data: str | bytes, document: str) -> Element:
    """The root element of a platform document; DocumentError when not safe, well-formed XML."""
    size = len(data.encode() if isinstance(data, str) else data)
    if size > MAX_DOCUMENT_BYTES:
        raise DocumentError(document, f"{size} bytes is larger than the {MAX_DOCUMENT_BYTES} "
                                      "bytes a platform document may have; refused")
    if isinstance(data, str):
        # Already decoded: drop the BOM and a declaration whose encoding no longer applies.
        text = data.lstrip("\ufeff")
        if text.startswith("<?xml"):
            end = text.find("?>")
            text = text[end + 2:] if end != -1 else text
        data = text.encode()
    try:
        return parse(data)
    except Refused as err:
        raise DocumentError(document, f"refused: {err} in platform documents") from None
    except XmlError as err:
        raise DocumentError(document, f"not well-formed XML: {err}") from None


def local(tag: str) -> str:
    """A tag without its `{namespace}`."""
    return tag.rsplit("}", 1)[-1]


def child(element: Element, name: str) -> Element | None:
    """The first direct child with this local name, whatever its namespace."""
    for item in element:
        if local(item.tag) == name:
            return item
    return None


def children(element: Element, name: str) -> list[Element]:
    """All direct children with this local name."""
    return [item for item in element if local(item.tag) == name]


def find(element: Element, path: str) -> Element | None:
    """The element at a `/`-separated path of local names below `element`."""
    current: Element | None = element
    for name in path.split("/"):
        if current is None:
            return None
        current = child(current, name)
    return current


def required_element(element: Element, path: str, document: str) -> Element:
    """The element at a path; DocumentError naming the document and element when missing."""
    found = find(element, path)
    if found is None:
        raise DocumentError(document, f"required element {path} is missing")
    return found


def text_at(element: Element, path: str) -> str | None:
    """The stripped text at a path, or None when the element is absent or empty."""
    found = find(element, path)
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    return value or None


def required_text(element: Element, path: str, document: str) -> str:
    """The text at a path; DocumentError naming the document and field when missing."""
    value = text_at(element, path)
    if value is None:
        raise DocumentError(document, f"required field {path} is missing or empty")
    return value


def required_int(element: Element, path: str, document: str) -> int:
    """An integer field; DocumentError naming the field when missing or not a number."""
    value = required_text(element, path, document)
    try:
        return int(value)
    except ValueError:
        raise DocumentError(document, f"field {path} is {value!r}, not an integer") from None


def attribute(element: Element, name: str) -> str | None:
    """An attribute by local name (namespaced or not), stripped; None when absent or empty."""
    for key, value in element.attrib.items():
        if local(key) == name:
            value = value.strip()
            return value or None
    return None


def required_attribute(element: Element, name: str, document: str, where: str) -> str:
    """An attribute that must be present; DocumentError naming element and attribute."""
    value = attribute(element, name)
    if value is None:
        raise DocumentError(document, f"{where} has no {name} attribute")
    return value


def flag(value: str | None, default: bool = False) -> bool:
    """A platform boolean attribute ("true"/"false", any case)."""
    if value is None:
        return default
    return value.strip().lower() == "true"
