"""A spilled batch's on-disk frame: header and CRC, and the sound frames read out of a segment."""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from typing import NamedTuple

# A frame: magic, then _HEAD (version, flags, records, payload length, batch id), then the CRC32
# of _HEAD and payload together, then the payload. The header carries the id and the record count
# so that acked frames are skipped, and the directory is counted, without decoding any JSON.
# Version 1 defines no flag: a frame with a newer version, or a sound one with a flag set, was
# written by a newer atrace, and is left for it to read (see parse).
_MAGIC = b"ATSP"
_VERSION = 1
_HEAD = struct.Struct(">BBII16s")
_CRC = struct.Struct(">I")
_HEADER_SIZE = len(_MAGIC) + _HEAD.size + _CRC.size
MAX_PAYLOAD = 0xFFFFFFFF


class Damage(NamedTuple):
    """A stretch of a segment holding no sound frame."""

    offset: int
    # (batch id, records) of each version-1 header met in the stretch: the batches it likely
    # held. Empty when no header survived (a header is not checked until its frame's CRC is).
    batches: list[tuple[uuid.UUID, int]]


class Parsed(NamedTuple):
    """What a segment holds."""

    # The sound frames as (batch id, records, payload start, payload end), in file order.
    frames: list[tuple[uuid.UUID, int, int, int]]
    damage: list[Damage]
    # (offset, version) where frames in a format this version cannot read begin.
    unknown: list[tuple[int, int]]


def make_frame(batch_id: uuid.UUID, records: int, payload: bytes) -> bytes:
    head = _HEAD.pack(_VERSION, 0, records, len(payload), batch_id.bytes)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((_MAGIC, head, _CRC.pack(crc), payload))


def _sound(data: bytes, pos: int, head: bytes, length: int) -> bool:
    # Whether the version-1 frame at pos, its header being ``head``, passes its checksum.
    body = pos + _HEADER_SIZE
    stop = body + length
    if stop > len(data):
        return False
    crc: int = _CRC.unpack_from(data, body - _CRC.size)[0]
    return zlib.crc32(memoryview(data)[body:stop], zlib.crc32(head)) == crc


def parse(data: bytes) -> Parsed:
    """The sound frames of a segment, the damaged stretches stepped over to find them, and the
    frames in a format this version cannot read.

    A frame that starts a stretch with a newer version than this one's, or a sound frame with a
    flag this version does not know, is no damage: it and what follows up to the next frame this
    version reads are left for a newer atrace. A version byte flipped by damage is told apart
    from a newer version by the checksum, which holds once the byte is put back.
    """
    frames: list[tuple[uuid.UUID, int, int, int]] = []
    damage: list[Damage] = []
    unknown: list[tuple[int, int]] = []
    stretch: Damage | None = None  # the damaged stretch being stepped over
    in_unknown = False  # stepping over what follows a frame of a newer format
    end = len(data)
    pos = 0
    while pos < end:
        body = pos + _HEADER_SIZE
        lost: tuple[uuid.UUID, int] | None = None  # a damaged frame whose header reads
        newer = 0  # the version of a frame in a newer format
        if body <= end and data.startswith(_MAGIC, pos):
            version, flags, records, length, raw_id = _HEAD.unpack_from(data, pos + 4)
            head = data[pos + 4 : body - _CRC.size]
            if version == _VERSION and _sound(data, pos, head, length):
                if flags:
                    unknown.append((pos, version))  # sound: its end is known, go on after it
                else:
                    frames.append((uuid.UUID(bytes=raw_id), records, body, body + length))
                pos = body + length
                stretch = None
                in_unknown = False
                continue
            if version == _VERSION:
                lost = (uuid.UUID(bytes=raw_id), records)
            elif version > _VERSION:
                if _sound(data, pos, bytes((_VERSION,)) + head[1:], length):
                    lost = (uuid.UUID(bytes=raw_id), records)  # a flipped version byte
                else:
                    # At a frame boundary, a newer format; inside damage, more damage.
                    newer = version if stretch is None else 0
        if newer:
            if not in_unknown:
                unknown.append((pos, newer))
                in_unknown = True
        elif not in_unknown:
            if stretch is None:
                stretch = Damage(pos, [])
                damage.append(stretch)
            if lost is not None:
                stretch.batches.append(lost)
        # Resynchronise on the next magic; a false one inside a payload fails its CRC.
        pos = data.find(_MAGIC, pos + 1)
        if pos < 0:
            break
    return Parsed(frames, damage, unknown)


def scan_headers(path: str, flags: int = 0) -> tuple[int, dict[uuid.UUID, int]]:
    # Headers only, seeking over payloads: enough to count a directory at startup without
    # reading every byte of it. A damaged frame ends the count; replay finds what follows.
    # ``flags`` are added to the open() flags (O_NOFOLLOW).
    frames: dict[uuid.UUID, int] = {}
    with open(os.open(path, os.O_RDONLY | flags), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + _HEADER_SIZE <= size:
            f.seek(pos)
            head = f.read(_HEADER_SIZE)
            if len(head) < _HEADER_SIZE or not head.startswith(_MAGIC):
                break
            version, flag_bits, records, length, raw_id = _HEAD.unpack_from(head, 4)
            if version != _VERSION or flag_bits or pos + _HEADER_SIZE + length > size:
                break
            frames[uuid.UUID(bytes=raw_id)] = records
            pos += _HEADER_SIZE + length
    return size, frames
