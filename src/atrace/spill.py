"""The disk spill: undelivered batches kept in checksummed segment files and replayed in order."""

from __future__ import annotations

import base64
import errno
import itertools
import math
import os
import secrets
import struct
import sys
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ._embedded import data_dir
from .encode import Row
from .errors import ConfigError

if sys.platform != "win32":
    import fcntl

__all__ = (
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "SPILL_DIR_ENV",
    "Spill",
    "SpillStats",
    "SpilledBatch",
    "default_spill_dir",
)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024
SPILL_DIR_ENV = "ATRACE_SPILL_DIR"

# A frame: magic, then _HEAD (version, flags, records, payload length, batch id), then the CRC32
# of _HEAD and payload together, then the payload. The header carries the id and the record count
# so that acked frames are skipped, and the directory is counted, without decoding any JSON.
_MAGIC = b"ATSP"
_VERSION = 1
_HEAD = struct.Struct(">BBII16s")
_CRC = struct.Struct(">I")
_HEADER_SIZE = len(_MAGIC) + _HEAD.size + _CRC.size
_MAX_PAYLOAD = 0xFFFFFFFF
_SEGMENT_SUFFIX = ".seg"
_ACKED_SUFFIX = ".acked"
_O_BINARY = getattr(os, "O_BINARY", 0)

# Column codes in a payload's "enc": "." JSON as is, "u" bytes held as their UTF-8 text,
# "x" bytes held as base64, "t" values that need a tag (see _tag).
# Floats are left out: JSON turns NaN and infinities into null, so they go through _tag.
_NATIVE = frozenset({int, str, bool, type(None)})
_BYTES_OR_NONE = frozenset({bytes, type(None)})
_I64_MIN = -(1 << 63)
_U64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class SpillStats:
    """A snapshot of a spill directory and of what this process did with it since it started."""

    pending_batches: int
    pending_records: int
    pending_bytes: int
    rejected_batches: int
    rejected_records: int
    rejected_bytes: int
    spilled_batches: int
    spilled_records: int
    replayed_batches: int
    replayed_records: int
    dropped_full: int
    dropped_unwritable: int
    corrupt_skipped: int
    segments: int


class SpilledBatch:
    """A batch read back from the spill; pass it to :meth:`Spill.ack` once a sink has it."""

    __slots__ = ("batch_id", "reason", "records", "rows", "segment")

    def __init__(self, batch_id: uuid.UUID, rows: list[Row], reason: str, segment: str) -> None:
        self.batch_id = batch_id
        self.rows = rows
        self.reason = reason
        self.records = len(rows)
        self.segment = segment  # opaque to callers: the file the batch lives in

    def __repr__(self) -> str:
        return f"<SpilledBatch {self.batch_id} of {self.records} ({self.reason})>"


def default_spill_dir() -> Path:
    """``ATRACE_SPILL_DIR`` if set, else ``spill`` in atrace's data directory."""
    configured = os.environ.get(SPILL_DIR_ENV, "")
    if configured:
        return Path(configured).expanduser()
    return data_dir() / "spill"


# ---- payload ---------------------------------------------------------------------------------


def _tag(value: Any) -> Any:
    # JSON-safe values pass as they are; anything else becomes a [code, text] pair, and no plain
    # row value is ever a list, so a list always means a tag.
    if value is None or type(value) is bool:
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else ["f", repr(float(value))]
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "surrogatepass")
            return ["S", base64.b64encode(raw).decode("ascii")]
        return str(value)
    if isinstance(value, int):
        if _I64_MIN <= value <= _U64_MAX:
            return int(value)
        return ["i", hex(value)]  # hex: decimal conversion of huge ints is capped by Python
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ["b", base64.b64encode(bytes(value)).decode("ascii")]
    try:
        text = str(value)
    except Exception:
        text = f"<unrepresentable {type(value).__qualname__}>"
    return ["r", text]


_UNTAG: dict[str, Callable[[str], Any]] = {
    "S": lambda text: base64.b64decode(text).decode("utf-8", "surrogatepass"),
    "i": lambda text: int(text, 16),
    "b": base64.b64decode,
    "f": float,
    "r": str,
}


def _untag(value: Any) -> Any:
    return _UNTAG[value[0]](value[1]) if type(value) is list else value


def _encode_column(col: Sequence[Any]) -> tuple[str, Sequence[Any]]:
    kinds = set(map(type, col))
    if kinds <= _NATIVE:
        return ".", col
    if kinds <= _BYTES_OR_NONE:
        try:
            if None in col:
                return "u", [None if v is None else v.decode() for v in col]
            return "u", list(map(bytes.decode, col))
        except UnicodeDecodeError:
            return "x", [None if v is None else base64.b64encode(v).decode("ascii") for v in col]
    return "t", [_tag(v) for v in col]


def _decode_column(code: str, col: list[Any]) -> list[Any]:
    if code == "u":
        if None in col:
            return [None if v is None else v.encode() for v in col]
        return list(map(str.encode, col))
    if code == "x":
        return [None if v is None else base64.b64decode(v) for v in col]
    return [_untag(v) for v in col]


def _encode(batch_id: uuid.UUID, reason: str, rows: Sequence[Sequence[Any]]) -> bytes:
    # Column-major: zip() transposes at C speed both ways, and a type check per column (not per
    # value) finds the few columns, like attrs, whose bytes JSON cannot hold.
    widths = set(map(len, rows))
    lengths: list[int] | None = None
    if len(widths) > 1:
        lengths = list(map(len, rows))
        cols: list[Sequence[Any]] = list(itertools.zip_longest(*rows))
    else:
        cols = list(zip(*rows, strict=True))
    codes = []
    encoded: list[Sequence[Any]] = []
    for col in cols:
        code, values = _encode_column(col)
        codes.append(code)
        encoded.append(values)
    obj: dict[str, Any] = {
        "id": str(batch_id),
        "reason": reason,
        "n": len(rows),
        "enc": "".join(codes),
        "cols": encoded,
    }
    if lengths is not None:
        obj["lens"] = lengths
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        # An int past 64 bits or a lone surrogate in a plain column: tag every value instead.
        obj["reason"] = reason.encode("utf-8", "replace").decode()
        obj["enc"] = "t" * len(cols)
        obj["cols"] = [[_tag(v) for v in col] for col in cols]
        return orjson.dumps(obj)


def _decode(payload: memoryview) -> tuple[str, list[Row]]:
    obj = orjson.loads(payload)
    cols: list[list[Any]] = obj["cols"]
    for i, code in enumerate(obj["enc"]):
        if code != ".":
            cols[i] = _decode_column(code, cols[i])
    rows: list[Row] = list(zip(*cols, strict=True)) if cols else [()] * obj["n"]
    lengths = obj.get("lens")
    if lengths is not None:
        rows = [row[:n] for row, n in zip(rows, lengths, strict=True)]
    return str(obj.get("reason", "")), rows


# ---- frames and files ------------------------------------------------------------------------


def _frame(batch_id: uuid.UUID, records: int, payload: bytes) -> bytes:
    head = _HEAD.pack(_VERSION, 0, records, len(payload), batch_id.bytes)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((_MAGIC, head, _CRC.pack(crc), payload))


def _parse(data: bytes) -> tuple[list[tuple[uuid.UUID, int, int, int]], int]:
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


def _scan_headers(path: str) -> tuple[int, dict[uuid.UUID, int]]:
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


def _read_acked(path: str) -> set[uuid.UUID]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return set()
    acked: set[uuid.UUID] = set()
    for line in data.split(b"\n"):
        if len(line) == 32:
            try:
                acked.add(uuid.UUID(hex=line.decode("ascii")))
            except (ValueError, UnicodeDecodeError):
                pass  # a torn line from a crash mid-write: that batch may be replayed again
    return acked


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "short write")
        view = view[written:]


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock without waiting; False if another holder has it."""
    if sys.platform == "win32":
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True  # a filesystem without flock (some NFS): carry on unlocked
    return True


def _fsync_dir(path: Path) -> None:
    if sys.platform == "win32":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


# ---- the spill -------------------------------------------------------------------------------


class _Segment:
    __slots__ = ("acked", "frames", "owned", "parsed", "path", "size")

    def __init__(
        self, path: str, size: int, frames: dict[uuid.UUID, int], acked: set[uuid.UUID]
    ) -> None:
        self.path = path
        self.size = size
        self.frames = frames  # batches not acked yet -> their record counts
        self.acked = acked
        self.owned = False  # this process appends to it (and holds its lock)
        # Checksums verified by a replay: only then may "no frames left" delete the file.
        self.parsed = False


class _Area:
    """One directory of segments: pending (replayed) or rejected (kept aside)."""

    __slots__ = ("batches", "bytes", "current", "directory", "fd", "records", "segments")

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.segments: dict[str, _Segment] = {}
        self.current: _Segment | None = None
        self.fd = -1
        self.batches = 0
        self.records = 0
        self.bytes = 0

    def count(self, seg: _Segment, sign: int) -> None:
        self.batches += sign * len(seg.frames)
        self.records += sign * sum(seg.frames.values())
        self.bytes += sign * seg.size


class Spill:
    """Batches appended to segment files under ``directory`` and replayed oldest first.

    Each process writes its own segments and holds a lock on the one it writes, so forked workers
    can share a directory; replay skips segments another process holds. Acks are recorded in a
    sidecar file per segment, so a restart does not replay what was delivered; a segment whose
    batches are all acked is deleted. Nothing here raises for a full or unwritable disk: the
    batch is refused and counted.
    """

    __slots__ = (
        "__weakref__",
        "_corrupt",
        "_dropped_full",
        "_dropped_unwritable",
        "_fsync",
        "_last_ts",
        "_lock",
        "_max_bytes",
        "_pending",
        "_pid",
        "_rejected",
        "_replayed_batches",
        "_replayed_records",
        "_scanned",
        "_segment_bytes",
        "_spilled_batches",
        "_spilled_records",
        "directory",
    )

    def __init__(
        self,
        directory: Path | str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = False,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ConfigError("max_bytes", max_bytes, "expected an integer of 0 or more")
        if (
            isinstance(segment_bytes, bool)
            or not isinstance(segment_bytes, int)
            or segment_bytes < 1
        ):
            raise ConfigError("segment_bytes", segment_bytes, "expected a positive integer")
        self.directory = Path(directory).expanduser()
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._fsync = bool(fsync)
        self._pending = _Area(self.directory / "pending")
        self._rejected = _Area(self.directory / "rejected")
        self._reset_process_state()
        _instances.add(self)

    def _reset_process_state(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._scanned = False
        self._last_ts = 0
        self._spilled_batches = 0
        self._spilled_records = 0
        self._replayed_batches = 0
        self._replayed_records = 0
        self._dropped_full = 0
        self._dropped_unwritable = 0
        self._corrupt = 0

    def __repr__(self) -> str:
        return f"<Spill {str(self.directory)!r}>"

    # -- public ----------------------------------------------------------------------------

    def append(
        self,
        batch_id: uuid.UUID,
        rows: Sequence[Sequence[Any]],
        *,
        reason: str = "undelivered",
        permanent: bool = False,
    ) -> bool:
        """Keep a batch on disk; False (counted, never raised) if it is full or unwritable.

        ``permanent`` puts it with the rejected batches, which :meth:`replay` leaves alone.
        """
        self._check_pid()
        try:
            records = len(rows)
            payload = _encode(batch_id, reason, rows)
            frame = _frame(batch_id, records, payload)
        except Exception:
            with self._lock:
                self._dropped_unwritable += _len_or_zero(rows)
            return False
        area = self._rejected if permanent else self._pending
        with self._lock:
            self._ensure_scanned()
            used = self._pending.bytes + self._rejected.bytes
            if used + len(frame) > self._max_bytes or len(payload) > _MAX_PAYLOAD:
                self._dropped_full += records
                return False
            try:
                self._write(area, batch_id, records, frame)
            except OSError:
                self._dropped_unwritable += records
                return False
            self._spilled_batches += 1
            self._spilled_records += records
        return True

    def replay(self, *, rejected: bool = False) -> Generator[SpilledBatch, None, None]:
        """Pending batches, oldest first, from every segment no other process holds.

        ``rejected=True`` reads the rejected batches instead (only ever on request). Damaged
        frames are counted in ``corrupt_skipped`` and stepped over. A batch stays on disk until
        it is passed to :meth:`ack`.
        """
        self._check_pid()
        area = self._rejected if rejected else self._pending
        with self._lock:
            self._ensure_scanned()
            # What this process wrote so far is replayable too: later appends go to a new file.
            self._seal(area)
            self._refresh(area)
            paths = sorted(area.segments)
        for path in paths:
            yield from self._replay_segment(area, path)

    def ack(self, batch: SpilledBatch) -> None:
        """Mark a replayed batch delivered; a segment with every batch acked is deleted."""
        self._check_pid()
        bid = batch.batch_id
        with self._lock:
            for area in (self._pending, self._rejected):
                seg = area.segments.get(batch.segment)
                if seg is not None:
                    break
            else:
                if os.path.exists(batch.segment):
                    self._record_ack(batch.segment, bid)
                return
            if bid in seg.acked:
                return
            self._replayed_batches += 1
            self._replayed_records += batch.records
            last = seg.parsed and not seg.owned and seg.frames.keys() <= {bid}
            # The last ack of a segment is its deletion; a sidecar line would be deleted with it.
            if not (last and self._delete(area, seg)):
                self._record_ack(seg.path, bid)
                seg.acked.add(bid)
                self._drop_frame(area, seg, bid)

    def purge(self, *, rejected: bool = False) -> int:
        """Delete the pending (or rejected) batches; returns how many records went.

        Segments another process is writing or replaying are left alone.
        """
        self._check_pid()
        area = self._rejected if rejected else self._pending
        purged = 0
        with self._lock:
            self._ensure_scanned()
            self._seal(area)
            self._refresh(area)
            for path in sorted(area.segments):
                seg = area.segments[path]
                try:
                    fd = os.open(path, os.O_RDONLY | _O_BINARY)
                except FileNotFoundError:
                    self._forget(area, seg)
                    continue
                except OSError:
                    continue
                try:
                    if not _try_lock(fd):
                        continue
                    records = sum(seg.frames.values())
                    if self._delete(area, seg):
                        purged += records
                finally:
                    os.close(fd)
        return purged

    def stats(self) -> SpillStats:
        """A snapshot of the counters (the directory is counted once, on first use)."""
        self._check_pid()
        with self._lock:
            self._ensure_scanned()
            pending, rejected = self._pending, self._rejected
            return SpillStats(
                pending_batches=pending.batches,
                pending_records=pending.records,
                pending_bytes=pending.bytes,
                rejected_batches=rejected.batches,
                rejected_records=rejected.records,
                rejected_bytes=rejected.bytes,
                spilled_batches=self._spilled_batches,
                spilled_records=self._spilled_records,
                replayed_batches=self._replayed_batches,
                replayed_records=self._replayed_records,
                dropped_full=self._dropped_full,
                dropped_unwritable=self._dropped_unwritable,
                corrupt_skipped=self._corrupt,
                segments=len(pending.segments),
            )

    def close(self) -> None:
        """Close the segments being written (other processes may replay them); a later append
        starts a new one."""
        self._check_pid()
        with self._lock:
            self._seal(self._pending)
            self._seal(self._rejected)

    def after_fork(self) -> None:
        """In a forked child: drop the parent's open segments; the next append starts a new one.

        Runs by itself after :func:`os.fork`, and on any call from a process with a new pid.
        """
        for area in (self._pending, self._rejected):
            if area.fd >= 0:
                try:
                    # Close, never unlock: the lock belongs to the parent's open file too.
                    os.close(area.fd)
                except OSError:
                    pass
            area.fd = -1
            area.current = None
            area.segments.clear()
            area.batches = area.records = area.bytes = 0
        # The parent's lock may have been held by a thread that does not exist here.
        self._reset_process_state()

    # -- internals (called with the lock held) ---------------------------------------------

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self.after_fork()

    def _ensure_scanned(self) -> None:
        if not self._scanned:
            self._scanned = True
            self._refresh(self._pending)
            self._refresh(self._rejected)

    def _refresh(self, area: _Area) -> None:
        # Other processes add and delete segments: pick up the new, forget the vanished.
        try:
            names = os.listdir(area.directory)
        except OSError:
            names = []
        directory = str(area.directory)
        present = {os.path.join(directory, n) for n in names if n.endswith(_SEGMENT_SUFFIX)}
        for name in names:
            if name.endswith(_SEGMENT_SUFFIX + _ACKED_SUFFIX):
                path = os.path.join(directory, name)
                if path[: -len(_ACKED_SUFFIX)] not in present:
                    _unlink(path)  # left by a crash between deleting a segment and its sidecar
        for path, seg in list(area.segments.items()):
            if path not in present and not seg.owned:
                self._forget(area, seg)
        for path in sorted(present - area.segments.keys()):
            try:
                size, frames = _scan_headers(path)
            except OSError:
                continue
            acked = _read_acked(path + _ACKED_SUFFIX)
            for bid in acked:
                frames.pop(bid, None)
            seg = _Segment(path, size, frames, acked)
            area.segments[path] = seg
            area.count(seg, 1)

    def _write(self, area: _Area, batch_id: uuid.UUID, records: int, frame: bytes) -> None:
        seg = area.current
        if seg is not None and seg.size and seg.size + len(frame) > self._segment_bytes:
            self._seal(area)
            seg = None
        if seg is None:
            seg = self._open_segment(area)
        fd = area.fd
        try:
            _write_all(fd, frame)
            if self._fsync:
                os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, seg.size)  # a torn frame would read back as damage
            except OSError:
                try:
                    size = os.fstat(fd).st_size
                except OSError:
                    size = seg.size
                area.bytes += size - seg.size
                seg.size = size
            self._seal(area)
            raise
        previous = seg.frames.get(batch_id)
        if previous is not None:
            area.batches -= 1
            area.records -= previous
        seg.frames[batch_id] = records
        seg.size += len(frame)
        area.batches += 1
        area.records += records
        area.bytes += len(frame)

    def _open_segment(self, area: _Area) -> _Segment:
        os.makedirs(area.directory, mode=0o700, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | _O_BINARY
        for _attempt in range(3):
            # Names sort in time order; the pid and a random part keep processes apart.
            ts = max(time.time_ns(), self._last_ts + 1)
            self._last_ts = ts
            name = f"{ts:020d}-{self._pid}-{secrets.token_hex(4)}{_SEGMENT_SUFFIX}"
            path = os.path.join(str(area.directory), name)
            fd = os.open(path, flags, 0o600)
            # Held while this process writes, so a replay elsewhere skips a half-written segment.
            # A replay can lock the new, empty file first and delete it as spent: start another.
            if _try_lock(fd) and os.fstat(fd).st_nlink > 0:
                break
            os.close(fd)
        else:
            raise OSError(errno.EAGAIN, "no segment could be created and locked", path)
        if self._fsync:
            _fsync_dir(area.directory)
        seg = _Segment(path, 0, {}, set())
        seg.owned = True
        area.segments[path] = seg
        area.current = seg
        area.fd = fd
        return seg

    def _seal(self, area: _Area) -> None:
        seg = area.current
        if seg is None:
            return
        try:
            os.close(area.fd)
        except OSError:
            pass
        area.fd = -1
        area.current = None
        seg.owned = False
        if seg.size == 0:
            self._delete(area, seg)

    def _replay_segment(self, area: _Area, path: str) -> Generator[SpilledBatch, None, None]:
        with self._lock:
            seg = area.segments.get(path)
            if seg is None or seg.owned:
                return
        try:
            fd = os.open(path, os.O_RDONLY | _O_BINARY)
        except FileNotFoundError:
            with self._lock:
                if area.segments.get(path) is seg:
                    self._forget(area, seg)
            return
        except OSError:
            return
        try:
            # Locked while this replay reads it, so two replays never hand out one batch twice.
            try:
                if not _try_lock(fd) or os.fstat(fd).st_nlink == 0:
                    return  # held elsewhere, or deleted (fully acked) since it was listed
                with open(fd, "rb", closefd=False) as f:
                    data = f.read()
            except OSError:
                return  # unreadable now; a later replay tries again
            frames, damaged = _parse(data)
            acked = _read_acked(path + _ACKED_SUFFIX)
            with self._lock:
                if area.segments.get(path) is not seg:
                    return
                seg.acked |= acked
                area.count(seg, -1)
                seg.size = len(data)
                seg.frames = {}
                for bid, records, _start, _stop in frames:
                    if bid not in seg.acked:
                        seg.frames[bid] = records
                area.count(seg, 1)
                if not seg.parsed:
                    self._corrupt += damaged
                    seg.parsed = True
                if not seg.frames:
                    self._delete(area, seg)
                    return
            view = memoryview(data)
            seen: set[uuid.UUID] = set()
            for bid, _records, start, stop in frames:
                if bid in seen or bid in seg.acked:
                    continue
                seen.add(bid)
                try:
                    reason, rows = _decode(view[start:stop])
                except Exception:
                    # Sound checksum, unreadable payload: as lost as a damaged frame, and
                    # treated as spent so that it is counted once and does not pin the segment.
                    with self._lock:
                        self._corrupt += 1
                        seg.acked.add(bid)
                        self._drop_frame(area, seg, bid)
                    continue
                yield SpilledBatch(bid, rows, reason, path)
        finally:
            os.close(fd)

    def _record_ack(self, path: str, batch_id: uuid.UUID) -> None:
        # A line per ack, led by a newline so a line torn by a crash cannot swallow the next.
        try:
            fd = os.open(
                path + _ACKED_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_BINARY, 0o600
            )
        except OSError:
            return  # unrecorded: at worst the batch is replayed again, and sinks dedupe by id
        try:
            _write_all(fd, b"\n" + batch_id.hex.encode("ascii"))
            if self._fsync:
                os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _drop_frame(self, area: _Area, seg: _Segment, batch_id: uuid.UUID) -> None:
        records = seg.frames.pop(batch_id, None)
        if records is not None:
            area.batches -= 1
            area.records -= records
        if not seg.frames and seg.parsed and not seg.owned:
            self._delete(area, seg)

    def _delete(self, area: _Area, seg: _Segment) -> bool:
        # The segment goes first: a crash before its sidecar goes leaves only an orphan sidecar.
        if not _unlink(seg.path):
            return False
        _unlink(seg.path + _ACKED_SUFFIX)
        self._forget(area, seg)
        return True

    def _forget(self, area: _Area, seg: _Segment) -> None:
        if area.segments.pop(seg.path, None) is seg:
            area.count(seg, -1)


def _len_or_zero(rows: object) -> int:
    try:
        return len(rows)  # type: ignore[arg-type]
    except Exception:
        return 0


_instances: weakref.WeakSet[Spill] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for spill in list(_instances):
        spill.after_fork()


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_after_fork_in_child)
