"""How an event's body and merged object are stored: one ``event.packed`` BLOB per event.

A push's body and the object it produced were stored as two text columns, and a location PUT's object
is usually its body again, byte for byte: the two made a row of about twice the body, which spilled
into SQLite's overflow pages (measured: 4.3 KB on disk per event of a 1.0 KB PUT). Rows written from
revision 0005 on keep ``body = ''`` and ``object = NULL`` and put both into ``packed``:

    byte 0     format: bit 0 = zstd frame follows, bits 1-2 = the object (0 none, 1 the body again,
               2 follows the body)
    [varint]   only when the object follows: the body's length in UTF-8 bytes (LEB128)
    content    UTF-8 body, then UTF-8 object when it follows; one zstd frame when bit 0 is set

Content under ``COMPRESS_FROM`` bytes is stored as is (a zstd frame would not save its overhead).
Compressing body and object as one frame lets an object that differs from its body (pretty-printed
body, merged EVSE) reuse the body's text. Rows written before 0005 (``packed`` NULL) are read from
their text columns; readers never see the storage format (``unpack`` is called by the store's reads).
"""

from __future__ import annotations

import threading

import zstandard

LEVEL = 1  # zstd level: 1 to 3 measured within 2 % in size on OCPI locations; 1 is the cheapest
COMPRESS_FROM = 512  # bytes of content; below it the frame header and entropy tables outweigh the gain

_ZSTD = 1
_OBJ_NONE, _OBJ_SAME, _OBJ_FOLLOWS = 0, 2, 4
_OBJ_MASK = 6

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c: zstandard.ZstdCompressor | None = getattr(_local, "c", None)
    if c is None:
        # no content size or checksum in the frame: the row holds it and the database checksums pages
        c = _local.c = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True, write_checksum=False)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def pack(body: str, obj: str | None) -> bytes:
    """The ``packed`` value of an event with this body and merged object text."""
    raw = body.encode()
    if obj is None:
        fmt, head = _OBJ_NONE, b""
    elif obj == body:
        fmt, head = _OBJ_SAME, b""
    else:
        fmt, head = _OBJ_FOLLOWS, _varint(len(raw))
        raw += obj.encode()
    if len(raw) >= COMPRESS_FROM:
        return bytes((fmt | _ZSTD,)) + head + _compressor().compress(raw)
    return bytes((fmt,)) + head + raw


def unpack(packed: bytes) -> tuple[str, str | None]:
    """(body, object) of a ``packed`` value, exactly as they were given to ``pack``."""
    fmt = packed[0]
    pos = 1
    body_len = 0
    kind = fmt & _OBJ_MASK
    if kind == _OBJ_FOLLOWS:
        shift = 0
        while True:
            b = packed[pos]
            pos += 1
            body_len |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
    content = bytes(packed[pos:])
    if fmt & _ZSTD:
        content = _decompressor().decompress(content)
    if kind == _OBJ_NONE:
        return content.decode(), None
    if kind == _OBJ_SAME:
        body = content.decode()
        return body, body
    return content[:body_len].decode(), content[body_len:].decode()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
