"""Decode a page of JSON records keeping each record's source text.

A download stores each record as JSON text. Parsing every record into a dict and
encoding it again is most of a page's CPU, so :class:`PageDecoder` reads a page body
twice with msgspec and builds no dicts at all:

- once for the records array as raw slices of the body (``msgspec.Raw``), which become
  the stored text, byte for byte what the source sent;
- once for each record's primary key and the few values the paginator reads (a next
  link, a cursor, a total), skipping everything else.

Only a body of the expected shape takes this path: an array where the data selector
points, each record an object whose primary key is a string or an integer, valid
UTF-8 throughout (an integer key within 64 bits, as the general path reads it).
Anything else makes :meth:`PageDecoder.decode` return ``None``, and
the caller parses the body the general way, which also words the error.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

__all__ = ["DecodedPage", "PageDecoder", "page_decoder"]

Path = tuple[str, ...]

_SEPARATOR = b"\x1e"  # ASCII record separator
_SEPARATOR_TEXT = "\x1e"
_KEY = operator.attrgetter("key")

# A primary key the fast path takes: a string, or an integer within 64 bits. The
# general path reads integers past 64 bits as floats, and a record's id must not depend
# on which path read its page (msgspec bounds are signed 64-bit, so the unsigned top
# half takes the general path too, which reads it as the same integer).
_Key = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | str


@dataclass(frozen=True, slots=True)
class DecodedPage:
    """A page body decoded by :class:`PageDecoder`.

    Attributes:
        keys: each record's primary key, as the source gave it (``str`` or ``int``).
        texts: each record's JSON object text, as the source sent it.
        values: a sparse copy of the body holding only the paths the decoder was asked
            for (nested dicts), for the paginator to read.

    """

    keys: list[Any]
    texts: list[str]
    values: dict[str, Any]


class PageDecoder:
    """Decodes the bodies of one table's pages (see the module docstring)."""

    def __init__(self, selector: Path, primary_key: str, paths: Sequence[Path]) -> None:
        """Prepare the decoders, or mark the shape as one only the general path reads.

        Args:
            selector: the path of the records array in the body (empty: the body is
                the array).
            primary_key: the field of each record holding its id.
            paths: the paths whose values :attr:`DecodedPage.values` must hold.

        """
        self._keys: msgspec.json.Decoder[Any] | None = None
        self._texts: msgspec.json.Decoder[Any] | None = None
        self._selector = selector
        self._leaves = tuple(dict.fromkeys(p for p in paths if p))
        if not _supported(selector, self._leaves):
            return
        key = msgspec.defstruct("RecordKey", [("key", _Key)], rename={"key": primary_key}, gc=False)
        self._keys = msgspec.json.Decoder(_shape(selector, list[key], self._leaves))  # type: ignore[valid-type]
        self._texts = msgspec.json.Decoder(_shape(selector, list[msgspec.Raw], ()))

    @property
    def enabled(self) -> bool:
        """Whether bodies can take the fast path at all (the paths allow it)."""
        return self._keys is not None

    def decode(self, content: bytes) -> DecodedPage | None:
        """The page's keys, record texts and values; ``None`` when the body does not fit."""
        if self._keys is None or self._texts is None:
            return None
        try:
            with_keys = self._keys.decode(content)
            raws = _dig_struct(self._texts.decode(content), self._selector)
            # One decode for the page, not one per record: JSON text never holds a raw
            # control character (strings must escape them), so none can be a record's.
            texts = _SEPARATOR.join(raws).decode("utf-8").split(_SEPARATOR_TEXT) if raws else []
        except (msgspec.MsgspecError, UnicodeDecodeError):
            return None
        if len(texts) != len(raws):
            return None  # a separator inside a record: invalid JSON, worded by the general path
        records = _dig_struct(with_keys, self._selector)
        values: dict[str, Any] = {}
        for leaf in self._leaves:
            value = _dig_struct(with_keys, leaf)
            if value is not msgspec.UNSET:
                _put(values, leaf, value)
        return DecodedPage(list(map(_KEY, records)), texts, values)


@functools.lru_cache(maxsize=256)
def page_decoder(selector: Path, primary_key: str, paths: tuple[Path, ...]) -> PageDecoder:
    """A :class:`PageDecoder`, shared by the reads of every table of the same shape.

    Building one defines a few struct types; a decoder is immutable, so reads share it.
    """
    return PageDecoder(selector, primary_key, paths)


def _supported(selector: Path, leaves: Sequence[Path]) -> bool:
    """Whether msgspec structs can describe the paths: object keys only, no overlap."""
    every = (selector, *leaves)
    if any(part.isdigit() for path in every for part in path):
        return False  # array indexes: the general path handles them
    if not selector and leaves:
        return False  # a top-level array has no paths to read
    for i, a in enumerate(every):
        for b in every[i + 1 :]:
            if a[: len(b)] == b or b[: len(a)] == a:
                return False  # one path inside another
    return True


def _shape(selector: Path, array: Any, leaves: Sequence[Path]) -> Any:
    """The type a body is decoded as: nested structs down to ``array`` and the leaves."""
    if not selector:
        return array
    tree: dict[str, Any] = {}
    _plant(tree, selector, ("array", array))
    for leaf in leaves:
        _plant(tree, leaf, ("value", Any))
    return _struct(tree)


def _plant(tree: dict[str, Any], path: Path, leaf: tuple[str, Any]) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = leaf


def _struct(tree: Mapping[str, Any]) -> Any:
    """A struct type for one level of ``tree``: the array's branch required, others not."""
    fields: list[tuple[Any, ...]] = []
    rename: dict[str, str] = {}
    for i, (name, node) in enumerate(tree.items()):
        attr = f"f{i}"
        rename[attr] = name
        if isinstance(node, tuple):
            kind, kind_type = node
            if kind == "array":
                fields.append((attr, kind_type))
            else:
                fields.append((attr, kind_type, msgspec.UNSET))
        elif _holds_array(node):
            fields.append((attr, _struct(node)))
        else:
            fields.append((attr, _struct(node) | msgspec.UnsetType, msgspec.UNSET))
    # Required fields first, as Python signatures want them.
    fields.sort(key=lambda field: len(field) == 3)
    return msgspec.defstruct("PageLevel", fields, rename=rename)


def _holds_array(tree: Mapping[str, Any]) -> bool:
    for node in tree.values():
        if isinstance(node, tuple) and node[0] == "array":
            return True
        if isinstance(node, dict) and _holds_array(node):
            return True
    return False


def _dig_struct(node: Any, path: Path) -> Any:
    """Follow ``path`` through the decoded structs (``UNSET`` where a branch is absent)."""
    for part in path:
        if node is msgspec.UNSET:
            return node
        node = getattr(node, _attr_of(node, part))
    return node


def _attr_of(node: Any, name: str) -> str:
    fields: tuple[str, ...] = type(node).__struct_fields__
    encoded: tuple[str, ...] = type(node).__struct_encode_fields__
    return fields[encoded.index(name)]


def _put(values: dict[str, Any], path: Path, value: Any) -> None:
    node = values
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
