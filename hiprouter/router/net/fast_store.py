"""The lean C-STORE receive path: what it parses, builds and sends (node.fast_store).

pynetdicom turns every P-DATA PDU into PDU and primitive objects, assembles a DIMSE
message, decodes its command set with pydicom, queues it for the association thread, wraps
it in an event, runs its service class and encodes the response with pydicom again: about
1 ms of Python per instance before hiprouter's own work starts. For the common case -- a
C-STORE-RQ on an accepted storage presentation context -- `pdu_guard.GuardedDUL` does this
itself in the DUL thread: it parses the command set (`parse_command`, Implicit VR Little
Endian group 0000 with the fields of a C-STORE-RQ only), reads the data set's fragments
with `recv_into` straight behind a file meta header (`StoreBuffer`), calls the same
C-STORE handler the pynetdicom path calls (with a `FastStoreEvent`, so every guard,
audit entry and metric applies unchanged) and sends the pre-encoded response
(`store_response_pdu`). Anything else -- another command, other command fields, a
command split over several fragments, a non-storage context -- goes to pynetdicom as
before. Association negotiation, C-ECHO, release and abort stay with pynetdicom.

The file written is byte for byte what `event.encoded_dataset()` gives on the pynetdicom
path (preamble, the same file meta group, the data set as received), and the response is
byte for byte pynetdicom's; tests/router/net/test_fast_store.py checks both.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
)

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
HANDLER_FAILED = 0xC211
"""pynetdicom's status when the C-STORE handler raised."""

STORAGE_CLASSES = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)

_UID = re.compile(rb"^[0-9]+(\.[0-9]+)*[\0 ]*$")
_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
# (0000,eeee) elements a C-STORE-RQ may carry: UL, UI, US and AE values.
_GROUP_LENGTH, _SOP_CLASS, _COMMAND, _MESSAGE_ID, _PRIORITY, _DATA_SET_TYPE = (
    0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800)
_SOP_INSTANCE, _MOVE_AE, _MOVE_ID = 0x1000, 0x1030, 0x1031
_US_FIELDS = frozenset({_COMMAND, _MESSAGE_ID, _PRIORITY, _DATA_SET_TYPE, _MOVE_ID})

KEEP_BUFFER = 16 * 1024 * 1024
"""Largest receive buffer an association keeps between instances (a 2500 x 2000 16-bit
radiograph fits; larger ones get a new buffer each time)."""
META_RESERVE = 1024
"""Bytes kept in front of the data set in a `StoreBuffer` for preamble and file meta (the
longest file meta group with 64-character UIDs is about 340 bytes)."""


@dataclass(frozen=True)
class StoreCommand:
    """The fields of a C-STORE-RQ command set the lean path uses."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str


def parse_command(data: bytes | memoryview, context_id: int) -> StoreCommand | None:
    """The C-STORE-RQ in an Implicit VR Little Endian command set; None for anything
    else (another command, a field a C-STORE-RQ does not have, a bad length or UID, no
    data set), which is then left to pynetdicom."""
    view = memoryview(data)
    offset, end = 0, len(view)
    fields: dict[int, bytes | int] = {}
    group_end = -1
    while offset < end:
        if offset + 8 > end:
            return None
        group, element, length = _ELEMENT.unpack_from(view, offset)
        offset += 8
        if group != 0x0000 or offset + length > end or element in fields:
            return None
        value = view[offset:offset + length]
        offset += length
        if element == _GROUP_LENGTH:
            if length != 4 or fields:
                return None
            group_end = offset + _UL.unpack(value)[0]
            fields[element] = 0
        elif element in _US_FIELDS:
            if length != 2:
                return None
            fields[element] = _US.unpack(value)[0]
        elif element in (_SOP_CLASS, _SOP_INSTANCE):
            raw = bytes(value)
            if not 0 < length <= 64 or not _UID.match(raw):
                return None
            fields[element] = raw.rstrip(b"\0 ")
        elif element == _MOVE_AE:
            if length > 16:
                return None
            fields[element] = bytes(value)
        else:
            return None
    if group_end != end or fields.get(_COMMAND) != C_STORE_RQ:
        return None
    if fields.get(_DATA_SET_TYPE, NO_DATA_SET) == NO_DATA_SET:
        return None
    sop_class, sop_instance = fields.get(_SOP_CLASS), fields.get(_SOP_INSTANCE)
    message_id = fields.get(_MESSAGE_ID)
    if not isinstance(sop_class, bytes) or not isinstance(sop_instance, bytes) or \
            not isinstance(message_id, int) or not sop_class or not sop_instance:
        return None
    return StoreCommand(context_id, message_id, sop_class.decode(), sop_instance.decode())


def _ui(group: int, element: int, value: str, explicit: bool) -> bytes:
    raw = value.encode()
    if len(raw) % 2:
        raw += b"\0"
    if explicit:
        return struct.pack("<HH2sH", group, element, b"UI", len(raw)) + raw
    return _ELEMENT.pack(group, element, len(raw)) + raw


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, "DICM" and the file meta group pynetdicom's `event.encoded_dataset()`
    writes for a C-STORE (pynetdicom's implementation UID and version name)."""
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode()
    if len(version) % 2:
        version += b" "
    body = b"".join((
        struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2), b"\x00\x01",
        _ui(0x0002, 0x0002, sop_class_uid, True),
        _ui(0x0002, 0x0003, sop_instance_uid, True),
        _ui(0x0002, 0x0010, transfer_syntax, True),
        _ui(0x0002, 0x0012, str(PYNETDICOM_IMPLEMENTATION_UID), True),
        struct.pack("<HH2sH", 0x0002, 0x0013, b"SH", len(version)), version,
    ))
    length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\0" * 128 + b"DICM" + length + body


def store_response_pdu(command: StoreCommand, status: int) -> bytes:
    """The C-STORE-RSP for `command` as one P-DATA-TF PDU (one command fragment, last),
    encoded as pynetdicom encodes it."""
    elements = b"".join((
        _ui(0x0000, _SOP_CLASS, command.sop_class_uid, False),
        _ELEMENT.pack(0x0000, _COMMAND, 2), _US.pack(C_STORE_RSP),
        _ELEMENT.pack(0x0000, 0x0120, 2), _US.pack(command.message_id),
        _ELEMENT.pack(0x0000, _DATA_SET_TYPE, 2), _US.pack(NO_DATA_SET),
        _ELEMENT.pack(0x0000, 0x0900, 2), _US.pack(status),
        _ui(0x0000, _SOP_INSTANCE, command.sop_instance_uid, False),
    ))
    command_set = _ELEMENT.pack(0x0000, _GROUP_LENGTH, 4) + _UL.pack(len(elements)) + elements
    pdv = struct.pack(">LBB", len(command_set) + 2, command.context_id, 0x03) + command_set
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_EXPLICIT_LE_DATA_SETS = frozenset({EXPLICIT_LE, *(
    str(uid) for uid in AllTransferSyntaxes
    if uid.is_encapsulated and uid.is_little_endian and not uid.is_implicit_VR)})
"""Transfer syntaxes whose data set (outside the pixel data) is Explicit VR Little Endian."""
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_ID_TAGS = {0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID",
            0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID"}
_LAST_ID_TAG = 0x0020000E
_META_HEADER = b"\x02\x00\x00\x00UL\x04\x00"
_PLAIN_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def quick_identifiers(encoded: bytes | memoryview) -> dict[str, str] | None:
    """The four UIDs `receive.read_identifiers` indexes, read without pydicom from a
    file (preamble, file meta, data set) whose data set is Implicit or Explicit VR Little
    Endian (deflated excluded) and whose elements up to (0020,000E) all have defined
    lengths. None for anything else, and whenever a value is not a plain valid UID, so
    that pydicom decides (and words the refusal) exactly as before."""
    view = memoryview(encoded)
    if len(view) < 144 or view[128:132] != b"DICM" or view[132:140] != _META_HEADER:
        return None
    start = 144 + _UL.unpack_from(view, 140)[0]
    if start > len(view):
        return None
    syntax = _element_values(view, 144, start, False, {0x00020010: "syntax"}, 0x00020010)
    if syntax is None or "syntax" not in syntax:
        return None
    ts = syntax["syntax"]
    if ts != IMPLICIT_LE and ts not in _EXPLICIT_LE_DATA_SETS:
        return None
    found = _element_values(view, start, len(view), ts == IMPLICIT_LE, _ID_TAGS, _LAST_ID_TAG)
    if found is None or len(found) != len(_ID_TAGS):
        return None
    for value in found.values():
        if len(value) > 64 or not _PLAIN_UID.match(value):
            return None
    return found


def _element_values(view: memoryview, offset: int, end: int, implicit: bool,
                    wanted: dict[int, str], last: int) -> dict[str, str] | None:
    """Values (as pydicom reads a UI value) of the `wanted` top-level elements between
    `offset` and `end`, up to tag `last`; None where this walk is not sure."""
    found: dict[str, str] = {}
    previous = -1
    while offset + 8 <= end:
        group, element = struct.unpack_from("<HH", view, offset)
        tag = group << 16 | element
        if tag <= previous:
            return None
        if tag > last:
            break
        previous = tag
        if implicit:
            length, header = _UL.unpack_from(view, offset + 4)[0], 8
        elif bytes(view[offset + 4:offset + 6]) in _LONG_VRS:
            if offset + 12 > end:
                return None
            length, header = _UL.unpack_from(view, offset + 8)[0], 12
        else:
            length, header = _US.unpack_from(view, offset + 6)[0], 8
        if length == 0xFFFFFFFF or offset + header + length > end:
            return None
        name = wanted.get(tag)
        if name is not None:
            raw = bytes(view[offset + header:offset + header + length])
            try:
                text = raw.decode("ascii")
            except UnicodeDecodeError:
                return None
            if "\\" in text:
                return None
            found[name] = text.rstrip("\0 ").strip("\x00 ")
        offset += header + length
    return found


class StoreBuffer:
    """One association's receive buffer: file meta in front, the data set's fragments
    read into it in place, reused from one instance to the next.

    The file meta is written right-aligned into the first `META_RESERVE` bytes so the
    encoded file is one contiguous slice; the buffer grows by doubling.
    """

    def __init__(self) -> None:
        self._buf = bytearray(META_RESERVE + 64 * 1024)
        self._start = META_RESERVE
        self.end = META_RESERVE

    def begin(self, meta: bytes) -> None:
        """Start a new instance whose file starts with `meta`."""
        self._start = META_RESERVE - len(meta)
        self._buf[self._start:META_RESERVE] = meta
        self.end = META_RESERVE

    @property
    def data_size(self) -> int:
        return self.end - META_RESERVE

    def reserve(self, size: int) -> memoryview:
        """A writable view of the next `size` bytes (`commit(size)` once they are filled)."""
        needed = self.end + size
        if needed > len(self._buf):
            grown = bytearray(max(needed, 2 * len(self._buf)))
            grown[:self.end] = memoryview(self._buf)[:self.end]
            self._buf = grown  # an older buffer may still be exported (a spool thread)
        return memoryview(self._buf)[self.end:needed]

    def commit(self, size: int) -> None:
        self.end += size

    def append(self, data: bytes | memoryview) -> None:
        self.reserve(len(data))[:] = data
        self.commit(len(data))

    def encoded(self) -> memoryview:
        """The whole file: preamble, file meta, data set."""
        return memoryview(self._buf)[self._start:self.end]

    def dataset(self) -> memoryview:
        return memoryview(self._buf)[META_RESERVE:self.end]

    def release(self) -> None:
        """Done with this instance; a buffer grown beyond `KEEP_BUFFER` is not kept (an
        idle association then holds 64 KiB, at most `KEEP_BUFFER`)."""
        if len(self._buf) > KEEP_BUFFER:
            self._buf = bytearray(META_RESERVE + 64 * 1024)
        self.end = META_RESERVE


class _Request:
    """What a C-STORE handler reads from `event.request`."""

    def __init__(self, command: StoreCommand, dataset: memoryview) -> None:
        self.MessageID = command.message_id
        self.AffectedSOPClassUID = command.sop_class_uid
        self.AffectedSOPInstanceUID = command.sop_instance_uid
        self.DataSet = _DataSet(dataset)


class _DataSet:
    def __init__(self, view: memoryview) -> None:
        self._view = view

    def getbuffer(self) -> memoryview:
        return self._view

    def getvalue(self) -> bytes:
        return bytes(self._view)


@dataclass(frozen=True)
class _Context:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str


class FastStoreEvent:
    """The part of pynetdicom's `Event` for EVT_C_STORE that hiprouter's handlers use:
    `assoc`, `request` (`AffectedSOPInstanceUID`, `DataSet.getbuffer()`), `context`
    (`transfer_syntax`) and `encoded_dataset()`."""

    fast_path = True
    """Served by the lean path (pynetdicom's events have no such attribute)."""

    def __init__(self, assoc: Any, command: StoreCommand, transfer_syntax: str,
                 buffer: StoreBuffer) -> None:
        self.assoc = assoc
        self.request = _Request(command, buffer.dataset())
        self.context = _Context(command.context_id, command.sop_class_uid, transfer_syntax)
        self._buffer = buffer

    def encoded_dataset(self, include_meta: bool = True) -> memoryview:
        return self._buffer.encoded() if include_meta else self._buffer.dataset()


@dataclass
class FastStore:
    """What `GuardedDUL` needs to serve C-STOREs itself (`Limits.fast_store`)."""

    handler: Callable[[Any], int]
    """The EVT_C_STORE handler bound on the pynetdicom path (with its metrics wrapper)."""
    storage_classes: frozenset[str] = STORAGE_CLASSES
