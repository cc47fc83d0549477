"""Segment files of the spill: locks, acks sidecars, and the bookkeeping of a directory of them."""

from __future__ import annotations

import errno
import os
import sys
import uuid
from pathlib import Path

from .frames import scan_headers

if sys.platform != "win32":
    import fcntl

SEGMENT_SUFFIX = ".seg"
ACKED_SUFFIX = ".acked"
O_BINARY = getattr(os, "O_BINARY", 0)


def read_acked(path: str) -> set[uuid.UUID]:
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


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "short write")
        view = view[written:]


def try_lock(fd: int) -> bool:
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


def fsync_dir(path: Path) -> None:
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


def record_ack(path: str, batch_id: uuid.UUID, fsync: bool) -> None:
    # A line per ack, led by a newline so a line torn by a crash cannot swallow the next.
    try:
        fd = os.open(path + ACKED_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_APPEND | O_BINARY, 0o600)
    except OSError:
        return  # unrecorded: at worst the batch is replayed again, and sinks dedupe by id
    try:
        write_all(fd, b"\n" + batch_id.hex.encode("ascii"))
        if fsync:
            os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Segment:
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


class Area:
    """One directory of segments: pending (replayed) or rejected (kept aside)."""

    __slots__ = ("batches", "bytes", "current", "directory", "fd", "records", "segments")

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.segments: dict[str, Segment] = {}
        self.current: Segment | None = None
        self.fd = -1
        self.batches = 0
        self.records = 0
        self.bytes = 0

    def count(self, seg: Segment, sign: int) -> None:
        self.batches += sign * len(seg.frames)
        self.records += sign * sum(seg.frames.values())
        self.bytes += sign * seg.size

    # The methods below are called with the owning Spill's lock held.

    def refresh(self) -> None:
        # Other processes add and delete segments: pick up the new, forget the vanished.
        try:
            names = os.listdir(self.directory)
        except OSError:
            names = []
        directory = str(self.directory)
        present = {os.path.join(directory, n) for n in names if n.endswith(SEGMENT_SUFFIX)}
        for name in names:
            if name.endswith(SEGMENT_SUFFIX + ACKED_SUFFIX):
                path = os.path.join(directory, name)
                if path[: -len(ACKED_SUFFIX)] not in present:
                    _unlink(path)  # left by a crash between deleting a segment and its sidecar
        for path, seg in list(self.segments.items()):
            if path not in present and not seg.owned:
                self.forget(seg)
        for path in sorted(present - self.segments.keys()):
            try:
                size, frames = scan_headers(path)
            except OSError:
                continue
            acked = read_acked(path + ACKED_SUFFIX)
            for bid in acked:
                frames.pop(bid, None)
            seg = Segment(path, size, frames, acked)
            self.segments[path] = seg
            self.count(seg, 1)

    def seal(self) -> None:
        seg = self.current
        if seg is None:
            return
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.fd = -1
        self.current = None
        seg.owned = False
        if seg.size == 0:
            self.delete(seg)

    def drop_frame(self, seg: Segment, batch_id: uuid.UUID) -> None:
        records = seg.frames.pop(batch_id, None)
        if records is not None:
            self.batches -= 1
            self.records -= records
        if not seg.frames and seg.parsed and not seg.owned:
            self.delete(seg)

    def delete(self, seg: Segment) -> bool:
        # The segment goes first: a crash before its sidecar goes leaves only an orphan sidecar.
        if not _unlink(seg.path):
            return False
        _unlink(seg.path + ACKED_SUFFIX)
        self.forget(seg)
        return True

    def forget(self, seg: Segment) -> None:
        if self.segments.pop(seg.path, None) is seg:
            self.count(seg, -1)
