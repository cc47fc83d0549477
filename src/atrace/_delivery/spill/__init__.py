"""The disk spill: undelivered batches kept in checksummed segment files and replayed in order."""

from __future__ import annotations

import errno
import logging
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
from .frames import MAX_PAYLOAD, Parsed, make_frame, parse
from .payload import decode_payload, encode_payload
from .segments import (
    ACKED_SUFFIX,
    DIR_MODE,
    O_BINARY,
    O_NOFOLLOW,
    SEGMENT_SUFFIX,
    Area,
    Segment,
    fsync_dir,
    make_dirs,
    read_acked,
    record_ack,
    try_lock,
    unsafe_dir,
    unsafe_file,
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

_log = logging.getLogger("atrace")


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
    :ivar dropped_unwritable: records refused because they could not be written, or because
        the spill directory is unsafe (a symbolic link, not this user's, or writable by others).
    :ivar corrupt_skipped: damaged or undecodable batches this process stepped over, each
        counted once. A damaged stretch of a segment counts one batch per frame header still
        readable in it, or one if none is; in a segment this process wrote, the batches it
        wrote there and did not find sound are counted instead of stretches without a header.
    :ivar segments: segment files holding pending batches (unreadable ones included).
    :ivar unreadable_segments: segment files, pending or rejected, holding frames in a format
        this version cannot read (written by a newer atrace). They are left in place for a
        newer atrace: never deleted, not even by :meth:`Spill.purge`, nor counted as corrupt.
        Their bytes count in ``pending_bytes`` (or ``rejected_bytes``) and towards the cap.
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
    unreadable_segments: int


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

    The spill trusts no file it did not make: it never follows a symbolic link (the directory,
    its ``pending`` and ``rejected`` folders, segments and their sidecars), and refuses a
    directory owned by another user or writable by users other than its owner, saying so once
    on the ``atrace`` logger. It creates its directories, and any missing parent, with mode
    0700. Damage is counted and logged once per finding, with the segment's path; a segment in
    a format this version cannot read is reported and left alone.
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
        "_said",
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
        self._said: set[tuple[str, str]] = set()  # refusals logged already

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
                seg = self._write(area, batch_id, records, frame)
            except OSError:
                self._dropped_unwritable += records
                return False
            if not permanent:
                seg.written[batch_id] = records
            self._spilled_batches += 1
            self._spilled_records += records
        return True

    def replay(self, *, rejected: bool = False) -> Generator[SpilledBatch, None, None]:
        """Pending batches, oldest first, from every segment no other process holds.

        ``rejected=True`` reads the rejected batches instead (only ever on request). Damaged
        frames are counted in ``corrupt_skipped``, logged and stepped over; a segment in a format
        this version cannot read is reported and left in place. A batch stays on disk until it
        is passed to :meth:`ack`. What this process appended and the replay found lost is then
        in :meth:`take_lost`.
        """
        self._check_pid()
        area = self._rejected if rejected else self._pending
        with self._lock:
            self._ensure_scanned()
            # What this process wrote so far is replayable too: later appends go to a new file.
            area.seal()
            if not self._refresh(area):
                return
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
            seg.written.pop(bid, None)
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

        Segments another process is writing or replaying are left alone, and so are segments
        holding frames in a format this version cannot read (reported as by :meth:`replay`):
        they are a newer atrace's to deal with. Pending batches this process appended and purged
        here are in :meth:`take_lost`.
        """
        self._check_pid()
        area = self._rejected if rejected else self._pending
        purged = 0
        with self._lock:
            self._ensure_scanned()
            area.seal()
            if not self._refresh(area):
                return 0
            for path in sorted(area.segments):
                seg = area.segments[path]
                try:
                    fd = os.open(path, os.O_RDONLY | O_BINARY | O_NOFOLLOW)
                except FileNotFoundError:
                    area.lose(seg)
                    area.forget(seg)
                    continue
                except OSError:
                    self._check_file(path)
                    continue
                try:
                    if not try_lock(fd):
                        continue
                    try:
                        with open(fd, "rb", closefd=False) as f:
                            parsed = parse(f.read())
                    except OSError:
                        continue
                    if parsed.unknown:
                        self._unreadable(seg, parsed)
                        continue
                    acked = seg.acked | read_acked(path + ACKED_SUFFIX)
                    records = sum(n for bid, n, _start, _stop in parsed.frames if bid not in acked)
                    if area.delete(seg):
                        area.lose(seg)
                        purged += records
                finally:
                    os.close(fd)
        return purged

    def take_lost(self) -> list[tuple[uuid.UUID, int]]:
        """The (batch id, records) of pending batches this process appended that are lost: found
        damaged or undecodable by a replay, in a segment file that went (deleted by hand, or by
        a purge), and so never replayed. Each is returned once; the list is emptied.

        A batch whose frame header was destroyed is known lost too, once a replay has read its
        segment and not found it sound. Batches kept apart as rejected are not tracked.
        """
        self._check_pid()
        with self._lock:
            lost, self._pending.lost = self._pending.lost, []
            self._rejected.lost.clear()
        return lost

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
                unreadable_segments=sum(
                    seg.unreadable for area in (pending, rejected) for seg in area.segments.values()
                ),
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
            area.lost.clear()  # the parent's to report
            area.refused.clear()
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

    def _refuse(self, what: str, path: object, why: str, then: str) -> None:
        key = (str(path), why)
        if key not in self._said:
            self._said.add(key)
            _log.error("atrace: spill %s %s %s; %s", what, path, why, then)

    def _safe_dirs(self, area: Area, *, create: bool) -> bool:
        """Whether the spill directory and the area's may be used: each is this user's own,
        writable by no other, and no symbolic link. With ``create``, missing ones are made
        (OSError if that fails); without, a missing one is fine: there is nothing in it."""
        if create:
            make_dirs(self.directory)
        for directory in (self.directory, area.directory):
            try:
                why = unsafe_dir(directory)
            except (FileNotFoundError, NotADirectoryError):
                if not create:
                    return True
                os.mkdir(directory, DIR_MODE)
                why = unsafe_dir(directory)
            except OSError:
                if create:
                    raise
                return False  # cannot be looked at: nor can what it holds
            if why is not None:
                self._refuse("directory", directory, why, "not using it")
                return False
        return True

    def _refresh(self, area: Area) -> bool:
        """Refresh ``area`` if its directories are safe; False (said once) if not."""
        if not self._safe_dirs(area, create=False):
            return False
        for path, why in area.refresh():
            self._refuse("file", path, why, "left alone")
        return True

    def _check_file(self, path: str) -> None:
        # An open that failed: say so if it was refused for what the file is.
        for name in (path, path + ACKED_SUFFIX):
            why = unsafe_file(name)
            if why is not None:
                self._refuse("file", name, why, "left alone")

    def _unreadable(self, seg: Segment, parsed: Parsed) -> None:
        if not seg.unreadable:
            seg.unreadable = True
            offset, version = parsed.unknown[0]
            _log.warning(
                "atrace: spill segment %s holds batches in a format this atrace cannot read "
                "(frame version %d%s at offset %d); left in place for a newer atrace",
                seg.path,
                version,
                ", with flags" if version == 1 else "",
                offset,
            )

    def _note_damage(self, area: Area, seg: Segment, parsed: Parsed) -> None:
        """Count (once) and log the damage a parse of ``seg`` found; what this process wrote
        there and is not sound is lost."""
        sound = {bid for bid, _records, _start, _stop in parsed.frames}
        lost = {
            bid: n for bid, n in seg.written.items() if bid not in sound and bid not in seg.acked
        }
        for bid in lost:
            del seg.written[bid]
        area.lost.extend(lost.items())
        fresh: set[uuid.UUID | int] = set(lost)
        headed: set[uuid.UUID] = set()
        headless: list[int] = []
        for stretch in parsed.damage:
            if not stretch.batches:
                headless.append(stretch.offset)
            for bid, _records in stretch.batches:
                # An acked batch damaged since it was delivered is not lost.
                if bid not in sound and bid not in seg.acked:
                    headed.add(bid)
        fresh |= headed
        # A stretch without a header held at least one batch. In a segment this process wrote,
        # that is a batch it wrote and did not find sound, counted already by its id.
        explained = headless[: len(lost.keys() - headed)]
        fresh.update(headless[len(explained) :])
        new = fresh - seg.counted
        seg.counted |= fresh
        seg.counted.update(explained)
        if new:
            self._corrupt += len(new)
            _log.warning(
                "atrace: spill segment %s is damaged: %d batch%s in it cannot be read and %s "
                "skipped",
                seg.path,
                len(new),
                "" if len(new) == 1 else "es",
                "is" if len(new) == 1 else "are",
            )

    def _write(self, area: Area, batch_id: uuid.UUID, records: int, frame: bytes) -> Segment:
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
        return seg

    def _open_segment(self, area: Area) -> Segment:
        if not self._safe_dirs(area, create=True):
            raise OSError(errno.EPERM, "unsafe spill directory", str(area.directory))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | O_BINARY | O_NOFOLLOW
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
            fd = os.open(path, os.O_RDONLY | O_BINARY | O_NOFOLLOW)
        except FileNotFoundError:
            with self._lock:
                if area.segments.get(path) is seg:
                    area.lose(seg)
                    area.forget(seg)
            return
        except OSError:
            with self._lock:
                self._check_file(path)
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
            parsed = parse(data)
            acked = read_acked(path + ACKED_SUFFIX)
            with self._lock:
                if area.segments.get(path) is not seg:
                    return
                seg.acked |= acked
                area.count(seg, -1)
                seg.size = len(data)
                seg.frames = {}
                for bid, records, _start, _stop in parsed.frames:
                    if bid not in seg.acked:
                        seg.frames[bid] = records
                area.count(seg, 1)
                seg.parsed = True
                if parsed.unknown:
                    self._unreadable(seg, parsed)
                self._note_damage(area, seg, parsed)
                if not seg.frames:
                    area.delete(seg)  # unless unreadable: then it stays
                    return
            view = memoryview(data)
            seen: set[uuid.UUID] = set()
            for bid, _records, start, stop in parsed.frames:
                if bid in seen or bid in seg.acked:
                    continue
                seen.add(bid)
                try:
                    reason, rows = decode_payload(view[start:stop])
                except Exception:
                    # Sound checksum, undecodable payload: as lost as a damaged frame, and
                    # treated as spent so that it is counted once and does not pin the segment.
                    with self._lock:
                        self._undecodable(area, seg, bid)
                    continue
                yield SpilledBatch(bid, rows, reason, path)
        finally:
            os.close(fd)

    def _undecodable(self, area: Area, seg: Segment, bid: uuid.UUID) -> None:
        if bid not in seg.counted:
            seg.counted.add(bid)
            self._corrupt += 1
            _log.warning(
                "atrace: spill segment %s is damaged: batch %s in it cannot be decoded and is "
                "skipped",
                seg.path,
                bid,
            )
        records = seg.written.pop(bid, None)
        if records is not None:
            area.lost.append((bid, records))
        seg.acked.add(bid)
        area.drop_frame(seg, bid)


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
