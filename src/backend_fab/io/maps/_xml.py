"""Safe XML for map files: the standard library's expat with every DTD feature refused.

Map files come from other plants and tools. A document type declaration is never needed by SEMI
E142 or G85, and it is the door to entity expansion ("billion laughs") and external entities
(XXE: reading local files or URLs). The parser below refuses any ``<!DOCTYPE``, any entity
declaration and any external entity reference the moment expat reports it, before a single entity
is expanded, so a hostile file costs microseconds. Namespaces are resolved and dropped from tag
names (``{urn:...}MapData`` becomes ``MapData``); an element whose namespace differs from its parent's
keeps the URI under the attribute key :data:`XMLNS`, so writers can restore it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat

from backend_fab.errors import MapFormatError

__all__ = [
    "XMLNS",
    "XmlDocument",
    "child",
    "children",
    "element_path",
    "parse_xml",
    "serialize_xml",
]

#: Attribute key under which an element whose namespace differs from its parent's keeps its URI.
XMLNS = "\x1fxmlns"

_NS_SEP = "\x1f"
_TRUNCATED = {
    expat.errors.codes[expat.errors.XML_ERROR_NO_ELEMENTS],
    expat.errors.codes[expat.errors.XML_ERROR_UNCLOSED_TOKEN],
    expat.errors.codes[expat.errors.XML_ERROR_UNCLOSED_CDATA_SECTION],
}


class _Refused(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class XmlDocument:
    """A parsed XML document: the root element (namespace-free tags) and its namespace URI."""

    __slots__ = ("namespace", "root")

    def __init__(self, root: ET.Element, namespace: str | None):
        self.root = root
        self.namespace = namespace


def parse_xml(data: bytes, name: str) -> XmlDocument:
    """Parse ``data`` refusing DTDs and entities; :class:`MapFormatError` naming ``name`` on error.

    The error gives the line and column expat stopped at (a truncated file reports "no element
    found" at its last line).
    """
    parser = expat.ParserCreate(namespace_separator=_NS_SEP)
    parser.buffer_text = True
    parser.ordered_attributes = False
    builder = ET.TreeBuilder()
    stack: list[str | None] = [None]

    def refuse_doctype(doctype_name, system_id, public_id, has_internal_subset):
        raise _Refused(f"a <!DOCTYPE {doctype_name}> declaration")

    def refuse_entity(entity_name, is_parameter_entity, *args):
        raise _Refused(f"an <!ENTITY {entity_name}> declaration")

    def refuse_external(context, base, system_id, public_id):
        raise _Refused(f"an external entity reference ({system_id or public_id})")

    def refuse_unparsed(entity_name, *args):
        raise _Refused(f"an unparsed entity {entity_name}")

    def local(tag: str) -> str:
        return tag.split(_NS_SEP, 1)[1] if _NS_SEP in tag else tag

    def start(tag, attrs):
        uri = tag.split(_NS_SEP, 1)[0] if _NS_SEP in tag else None
        attrib = {local(k): v for k, v in attrs.items()}
        if uri != stack[-1]:
            attrib[XMLNS] = uri or ""
        stack.append(uri)
        builder.start(local(tag), attrib)

    def end(tag):
        stack.pop()
        builder.end(local(tag))

    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_entity
    parser.UnparsedEntityDeclHandler = refuse_unparsed
    parser.ExternalEntityRefHandler = refuse_external
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        raise MapFormatError(
            f"{name}: refused {exc.what} at line {parser.CurrentLineNumber}; map files must not "
            "declare a DTD or entities (entity expansion and external entities are unsafe)"
        ) from None
    except expat.ExpatError as exc:
        reason = expat.ErrorString(exc.code)
        hint = " (the file looks truncated)" if exc.code in _TRUNCATED else ""
        raise MapFormatError(
            f"{name}: malformed XML: {reason} at line {exc.lineno}, column {exc.offset}{hint}"
        ) from None
    root = builder.close()
    return XmlDocument(root, root.attrib.pop(XMLNS, None) or None)


def children(elem: ET.Element, tag: str) -> list[ET.Element]:
    """Direct children of ``elem`` named ``tag``."""
    return [c for c in elem if c.tag == tag]


def child(elem: ET.Element, tag: str) -> ET.Element | None:
    """The first direct child of ``elem`` named ``tag``, or None."""
    for c in elem:
        if c.tag == tag:
            return c
    return None


def element_path(*parts: tuple[str, int] | str) -> str:
    """A readable element path for messages: ``SubstrateMaps/SubstrateMap[2]/Overlay[1]``."""
    out = []
    for part in parts:
        if isinstance(part, tuple):
            out.append(f"{part[0]}[{part[1] + 1}]")
        else:
            out.append(part)
    return "/".join(out)


def serialize_xml(root: ET.Element, namespace: str | None) -> bytes:
    """UTF-8 bytes with an XML declaration, two-space indentation, ``xmlns`` on the root."""
    if namespace:
        root.attrib = {"xmlns": namespace, **root.attrib}
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode", short_empty_elements=True)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n").encode("utf-8")
