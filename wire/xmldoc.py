"""Safe XML reading for platform documents: no DTD, no entities, bounded size, named errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET  # types and ParseError only; parsing goes through defusedxml

from wire.errors import DocumentError

Element = ET.Element
# The largest platform document seen (an ExtensionsConfig with signatures) is a few MB.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


def parse_xml(data: str | bytes, document: str) -> Element:
    """The root element of a platform document; DocumentError when not safe, well-formed XML."""
    import defusedxml.ElementTree as safe_et
    from defusedxml import DefusedXmlException

    size = len(data.encode() if isinstance(data, str) else data)
    if size > MAX_DOCUMENT_BYTES:
        raise DocumentError(document, f"{size} bytes is larger than the {MAX_DOCUMENT_BYTES} "
                                      "bytes a platform document may have; refused")
    if isinstance(data, bytes):
        data = data.decode("utf-8-sig", errors="replace")
    # A text declaration with an encoding cannot be parsed from str: drop it, we decoded already.
    text = data.lstrip("\ufeff")
    if text.startswith("<?xml"):
        end = text.find("?>")
        text = text[end + 2:] if end != -1 else text
    try:
        root: Element = safe_et.fromstring(text, forbid_dtd=True)
    except DefusedXmlException as err:
        raise DocumentError(document, f"refused: {type(err).__name__} (DTDs and entities are "
                                      "not allowed in platform documents)") from None
    except ET.ParseError as err:
        raise DocumentError(document, f"not well-formed XML: {err}") from None
    return root


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
