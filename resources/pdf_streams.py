"""How large a PDF's streams become once decoded, measured without holding any of them.

A few kilobytes of a PDF can decode to gigabytes (zeros deflated, or deflated twice, or
deflated then hex-encoded), and pdfium decodes a stream whole when a page uses it. This walks
the raw file for stream data, reads each stream's ``/Filter`` chain from its dictionary and
runs the data through streaming decoders of the same chain, a piece at a time, counting what
comes out; it stops at the first stream whose decoded size passes the cap.

Decoded here: FlateDecode, LZWDecode, ASCIIHexDecode, ASCII85Decode, RunLengthDecode (and
their abbreviations), in any order and depth. Image codecs (DCT, JPX, JBIG2, CCITT) end the
chain: their pixels are checked against the page pixel cap before anything is rendered.
Streams of an encrypted PDF cannot be decoded without its key and are not counted; the
reader's memory cap (``resources.extract_worker``) still bounds them.
"""

from __future__ import annotations

import mmap
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

Pieces = Iterator[bytes]

# "stream" then an end of line starts a stream's data; "endstream" is no start.
_STREAM_START = re.compile(rb"(?<!end)stream\r?\n")
_FILTER = re.compile(rb"/Filter\s*(\[[^\]]*\]|/[A-Za-z0-9]+)")
_NAME = re.compile(rb"/([A-Za-z0-9]+)")
_RAW_PIECE = 1 << 16  # raw bytes handed to the first decoder at a time
_OUT_PIECE = 1 << 20  # most bytes a decoder hands on at a time
_DICT_WINDOW = 1 << 16  # how far back from "stream" its dictionary is looked for


def _inflate(pieces: Pieces) -> Pieces:
    inflater = zlib.decompressobj()
    try:
        for piece in pieces:
            while piece and not inflater.eof:
                out = inflater.decompress(piece, _OUT_PIECE)
                if out:
                    yield out
                piece = inflater.unconsumed_tail
            if inflater.eof:
                return
        tail = inflater.flush()
        if tail:
            yield tail
    except zlib.error:
        return  # damaged or not zlib: pdfium decides what it makes of it


_BLANKS = b" \t\r\n\f\0"


def _ascii_hex(pieces: Pieces) -> Pieces:
    odd = b""
    for piece in pieces:
        end = piece.find(b">")
        digits = odd + (piece if end < 0 else piece[:end]).translate(None, _BLANKS)
        whole = len(digits) - len(digits) % 2
        try:
            yield bytes.fromhex(digits[:whole].decode("ascii"))
        except ValueError:
            return  # not hex: damaged
        odd = digits[whole:]
        if end >= 0:
            break
    if odd:
        yield bytes.fromhex((odd + b"0").decode("ascii"))


def _ascii85(pieces: Pieces) -> Pieces:
    import base64

    rest = b""
    for piece in pieces:
        end = piece.find(b"~>")
        text = rest + (piece if end < 0 else piece[:end]).translate(None, _BLANKS)
        text = text.replace(b"z", b"!!!!!")  # four zero bytes, as a whole group
        whole = len(text) - len(text) % 5
        try:
            yield base64.a85decode(text[:whole])
        except ValueError:
            return  # not ASCII85: damaged
        rest = text[whole:]
        if end >= 0:
            break
    if rest:
        try:
            yield base64.a85decode(rest)
        except ValueError:
            return


def _run_length(pieces: Pieces) -> Pieces:
    buf = b""
    for piece in pieces:
        buf += piece
        out = bytearray()
        i = 0
        while i < len(buf):
            length = buf[i]
            if length == 128:
                yield bytes(out)
                return
            if length < 128:
                if i + 1 + length + 1 > len(buf):
                    break
                out += buf[i + 1 : i + 2 + length]
                i += 2 + length
            else:
                if i + 1 >= len(buf):
                    break
                out += buf[i + 1 : i + 2] * (257 - length)
                i += 2
        buf = buf[i:]
        yield bytes(out)


def _lzw(pieces: Pieces) -> Pieces:
    """PDF's LZW: 9 to 12-bit codes, most significant bit first, early change on."""
    table = [bytes([i]) for i in range(256)] + [b"", b""]
    width, bits, nbits, previous = 9, 0, 0, b""
    out = bytearray()
    for piece in pieces:
        for byte in piece:
            bits, nbits = (bits << 8) | byte, nbits + 8
            while nbits >= width:
                nbits -= width
                code = (bits >> nbits) & ((1 << width) - 1)
                if code == 256:  # clear
                    del table[258:]
                    width, previous = 9, b""
                    continue
                if code == 257:  # end of data
                    yield bytes(out)
                    return
                if code < len(table):
                    entry = table[code]
                elif code == len(table) and previous:
                    entry = previous + previous[:1]
                else:
                    yield bytes(out)
                    return  # damaged
                out += entry
                if previous and len(table) < 4096:
                    table.append(previous + entry[:1])
                previous = entry
                if len(table) + 1 >= (1 << width) and width < 12:
                    width += 1
                if len(out) >= _OUT_PIECE:
                    yield bytes(out)
                    out.clear()
            bits &= (1 << nbits) - 1
    yield bytes(out)


_DECODERS: dict[bytes, Callable[[Pieces], Pieces]] = {
    b"FlateDecode": _inflate,
    b"Fl": _inflate,
    b"LZWDecode": _lzw,
    b"LZW": _lzw,
    b"ASCIIHexDecode": _ascii_hex,
    b"AHx": _ascii_hex,
    b"ASCII85Decode": _ascii85,
    b"A85": _ascii85,
    b"RunLengthDecode": _run_length,
    b"RL": _run_length,
}


def _zlib_header(head: bytes) -> bool:
    """Whether two bytes open a zlib stream: deflate, a window of at most 32K, a checksum."""
    return (
        len(head) == 2
        and head[0] & 0x0F == 8
        and head[0] >> 4 <= 7
        and (head[0] << 8 | head[1]) % 31 == 0
    )


def _filters(data: mmap.mmap, start: int) -> list[bytes] | None:
    """The stream's filter chain from its dictionary, or None where it cannot be read."""
    begin = data.rfind(b"obj", max(0, start - _DICT_WINDOW), start)
    if begin < 0:
        return None
    found = _FILTER.search(data[begin:start])
    if found is None:
        return []  # no filter: the data is what it is
    return _NAME.findall(found.group(1))


def _raw(data: mmap.mmap, start: int, stop: int) -> Pieces:
    for at in range(start, stop, _RAW_PIECE):
        yield data[at : min(at + _RAW_PIECE, stop)]


def _decoders(data: mmap.mmap, start: int, pos: int) -> list[Callable[[Pieces], Pieces]]:
    """The decoders of the stream whose data begins at ``pos``, up to its first image codec
    (checked in pixels before rendering); where no dictionary is found, Flate if it looks it."""
    chain = _filters(data, start)
    if chain is None:
        chain = [b"FlateDecode"] if _zlib_header(data[pos : pos + 2]) else []
    decoders = []
    for name in chain:
        if name not in _DECODERS:
            break
        decoders.append(_DECODERS[name])
    return decoders


def largest_decoded_stream(path: Path, stop_after: int) -> int:
    """The decoded size of the PDF's largest stream, counting stops at the first that passes
    ``stop_after`` (its size so far is returned). Memory stays at a few pieces."""
    largest = 0
    with path.open("rb") as fh:
        try:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            return 0
        with data:
            for found in _STREAM_START.finditer(data):  # type: ignore[call-overload]
                pos = found.end()
                decoders = _decoders(data, found.start(), pos)
                if not decoders:
                    continue
                end = data.find(b"endstream", pos)
                pieces = _raw(data, pos, len(data) if end < 0 else end)
                for decode in decoders:
                    pieces = decode(pieces)
                size = 0
                for piece in pieces:
                    size += len(piece)
                    if size > stop_after:
                        return size
                largest = max(largest, size)
    return largest
