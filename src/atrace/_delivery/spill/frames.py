"""A spilled batch's on-disk frame: header and CRC, and the sound frames read out of a segment."""

from __future__ import annotations

import os
import struct
import uuid
import zlib

# A frame: magic, then _HEAD (version, flags, records, payload length, batch id), then the CRC32
# of _HEAD and payload together, then the payload. The header carries the id and the record count
# so that acked frames are skipped, and the directory is counted, without decoding any JSON.
_MAGIC = b"ATSP"
_VERSION = 1
_HEAD = struct.Struct(">BBII16s")
_CRC = struct.Struct(">I")
_HEADER_SIZE = len(_MAGIC) + _HEAD.size + _CRC.size
MAX_PAYLOAD = 0xFFFFFFFF


def make_frame(batch_id: uuid.UUID, records: int, payload: bytes) -> bytes:
    head = _HEAD.pack(_VERSION, 0, records, len(payload), batch_id.bytes)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((_MAGIC, head, _CRC.pack(crc), payload))


def parse(data: bytes) -> tuple[list[tuple[uuid.UUID, int, int, int]], int]:
    """The sound frames of a segment as (batch id, records, payload start, payload end), and
    how many damaged stretches were skipped to find them."""
    frames: list[tuple[uuid.UUID, int, int, int]] = []
    damaged = 0
    in_damage = False
    view = memoryview(data)
    end = len(data)
    pos = 0
    while pos < end:
        body = pos + _HEADER_SIZE
        sound = False
        if body <= end and data.startswith(_MAGIC, pos):
            version, _flags, records, length, raw_id = _HEAD.unpack_from(data, pos + 4)
            stop = body + length
            if version == _VERSION and stop <= end:
                (crc,) = _CRC.unpack_from(data, body - _CRC.size)
                head_crc = zlib.crc32(view[pos + 4 : body - _CRC.size])
                if zlib.crc32(view[body:stop], head_crc) == crc:
                    frames.append((uuid.UUID(bytes=raw_id), records, body, stop))
                    pos = stop
                    in_damage = False
                    sound = True
        if not sound:
            if not in_damage:
                damaged += 1
                in_damage = True
            # Resynchronise on the next magic; a false one inside a payload fails its CRC.
            pos = data.find(_MAGIC, pos + 1)
            if pos < 0:
                break
    return frames, damaged


def scan_headers(path: str) -> tuple[int, dict[uuid.UUID, int]]:
    # Headers only, seeking over payloads: enough to count a directory at startup without
    # reading every byte of it. A damaged frame ends the count; replay finds what follows.
    frames: dict[uuid.UUID, int] = {}
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + _HEADER_SIZE <= size:
            f.seek(pos)
            head = f.read(_HEADER_SIZE)
            if len(head) < _HEADER_SIZE or not head.startswith(_MAGIC):
                break
            version, _flags, records, length, raw_id = _HEAD.unpack_from(head, 4)
            if version != _VERSION or pos + _HEADER_SIZE + length > size:
                break
            frames[uuid.UUID(bytes=raw_id)] = records
            pos += _HEADER_SIZE + length
    return size, frames
