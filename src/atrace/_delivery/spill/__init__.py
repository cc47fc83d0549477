"""The disk spill: undelivered batches kept in checksummed segment files and replayed in order."""

from __future__ import annotations

import errno
import os
import secrets
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._postgres.embedded import data_dir
from ..._records import Row
from ...config import check_int, env
from .frames import MAX_PAYLOAD, make_frame, parse
from .payload import decode_payload, encode_payload
from .segments import (
    ACKED_SUFFIX,
    O_BINARY,
    SEGMENT_SUFFIX,
    Area,
    Segment,
    fsync_dir,
    read_acked,
    record_ack,
    try_lock,
    write_all,
)

__all__ = (
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "Spill",
    "SpillStats",
    "SpilledBatch",
    "default_spill_dir",
)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class SpillStats:
    """A snapshot of a spill directory and of what this process did with it since it started.

    :ivar pending_batches: batches waiting to be replayed (from every process).
    :ivar pending_records: records in them.
    :ivar pending_bytes: bytes they take on disk.
    :ivar rejected_batches: batches a sink refused for good, kept apart.
    :ivar rejected_records: records in them.
    :ivar rejected_bytes: bytes they take on disk.
    :ivar spilled_batches: batches this process appended.
    :ivar spilled_records: records in them.
    :ivar replayed_batches: batches this process acked after a replay.
    :ivar replayed_records: records in them.
    :ivar dropped_full: records refused because the spill was full.
    :ivar dropped_unwritable: records refused because they could not be written.
    :ivar corrupt_skipped: damaged or unreadable batches stepped over.
    :ivar segments: segment files holding pending batches.
    """

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
    configured = env("ATRACE_SPILL_DIR")
    if configured is not None:
        return Path(configured).expanduser()
    return data_dir() / "spill"


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
        self._max_bytes = check_int("max_bytes", max_bytes, 0)
        self._segment_bytes = check_int("segment_bytes", segment_bytes, 1)
        self.directory = Path(directory).expanduser()
        self._fsync = bool(fsync)
        self._pending = Area(self.directory / "pending")
        self._rejected = Area(self.directory / "rejected")
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
            payload = encode_payload(batch_id, reason, rows)
            frame = make_frame(batch_id, records, payload)
        except Exception:
            with self._lock:
                self._dropped_unwritable += _len_or_zero(rows)
            return False
        area = self._rejected if permanent else self._pending
        with self._lock:
            self._ensure_scanned()
            used = self._pending.bytes + self._rejected.bytes
            if used + len(frame) > self._max_bytes or len(payload) > MAX_PAYLOAD:
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
            area.seal()
            area.refresh()
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
                    record_ack(batch.segment, bid, self._fsync)
                return
            if bid in seg.acked:
                return
            self._replayed_batches += 1
            self._replayed_records += batch.records
            last = seg.parsed and not seg.owned and seg.frames.keys() <= {bid}
            # The last ack of a segment is its deletion; a sidecar line would be deleted with it.
            if not (last and area.delete(seg)):
                record_ack(seg.path, bid, self._fsync)
                seg.acked.add(bid)
                area.drop_frame(seg, bid)

    def purge(self, *, rejected: bool = False) -> int:
        """Delete the pending (or rejected) batches; returns how many records went.

        Segments another process is writing or replaying are left alone.
        """
        self._check_pid()
        area = self._rejected if rejected else self._pending
        purged = 0
        with self._lock:
            self._ensure_scanned()
            area.seal()
            area.refresh()
            for path in sorted(area.segments):
                seg = area.segments[path]
                try:
                    fd = os.open(path, os.O_RDONLY | O_BINARY)
                except FileNotFoundError:
                    area.forget(seg)
                    continue
                except OSError:
                    continue
                try:
                    if not try_lock(fd):
                        continue
                    records = sum(seg.frames.values())
                    if area.delete(seg):
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
            self._pending.seal()
            self._rejected.seal()

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
            self._pending.refresh()
            self._rejected.refresh()

    def _write(self, area: Area, batch_id: uuid.UUID, records: int, frame: bytes) -> None:
        seg = area.current
        if seg is not None and seg.size and seg.size + len(frame) > self._segment_bytes:
            area.seal()
            seg = None
        if seg is None:
            seg = self._open_segment(area)
        fd = area.fd
        try:
            write_all(fd, frame)
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
            area.seal()
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

    def _open_segment(self, area: Area) -> Segment:
        os.makedirs(area.directory, mode=0o700, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | O_BINARY
        for _attempt in range(3):
            # Names sort in time order; the pid and a random part keep processes apart.
            ts = max(time.time_ns(), self._last_ts + 1)
            self._last_ts = ts
            name = f"{ts:020d}-{self._pid}-{secrets.token_hex(4)}{SEGMENT_SUFFIX}"
            path = os.path.join(str(area.directory), name)
            fd = os.open(path, flags, 0o600)
            # Held while this process writes, so a replay elsewhere skips a half-written segment.
            # A replay can lock the new, empty file first and delete it as spent: start another.
            if try_lock(fd) and os.fstat(fd).st_nlink > 0:
                break
            os.close(fd)
        else:
            raise OSError(errno.EAGAIN, "no segment could be created and locked", path)
        if self._fsync:
            fsync_dir(area.directory)
        seg = Segment(path, 0, {}, set())
        seg.owned = True
        area.segments[path] = seg
        area.current = seg
        area.fd = fd
        return seg

    def _replay_segment(self, area: Area, path: str) -> Generator[SpilledBatch, None, None]:
        with self._lock:
            seg = area.segments.get(path)
            if seg is None or seg.owned:
                return
        try:
            fd = os.open(path, os.O_RDONLY | O_BINARY)
        except FileNotFoundError:
            with self._lock:
                if area.segments.get(path) is seg:
                    area.forget(seg)
            return
        except OSError:
            return
        try:
            # Locked while this replay reads it, so two replays never hand out one batch twice.
            try:
                if not try_lock(fd) or os.fstat(fd).st_nlink == 0:
                    return  # held elsewhere, or deleted (fully acked) since it was listed
                with open(fd, "rb", closefd=False) as f:
                    data = f.read()
            except OSError:
                return  # unreadable now; a later replay tries again
            frames, damaged = parse(data)
            acked = read_acked(path + ACKED_SUFFIX)
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
                    area.delete(seg)
                    return
            view = memoryview(data)
            seen: set[uuid.UUID] = set()
            for bid, _records, start, stop in frames:
                if bid in seen or bid in seg.acked:
                    continue
                seen.add(bid)
                try:
                    reason, rows = decode_payload(view[start:stop])
                except Exception:
                    # Sound checksum, unreadable payload: as lost as a damaged frame, and
                    # treated as spent so that it is counted once and does not pin the segment.
                    with self._lock:
                        self._corrupt += 1
                        seg.acked.add(bid)
                        area.drop_frame(seg, bid)
                    continue
                yield SpilledBatch(bid, rows, reason, path)
        finally:
            os.close(fd)


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
