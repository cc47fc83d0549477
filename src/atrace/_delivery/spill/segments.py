"""Segment files of the spill: locks, acks sidecars, and the bookkeeping of a directory of them."""

from __future__ import annotations

import errno
import os
import stat
import sys
import uuid
from pathlib import Path

from .frames import scan_headers

if sys.platform != "win32":
    import fcntl

SEGMENT_SUFFIX = ".seg"
ACKED_SUFFIX = ".acked"
O_BINARY = getattr(os, "O_BINARY", 0)
# Never through a symbolic link, where the platform can say so.
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIR_MODE = 0o700


def unsafe_dir(path: Path) -> str | None:
    """Why the spill must not use the directory ``path``, or None; FileNotFoundError if absent.

    Refused: a symbolic link, anything but a directory, and (off Windows) a directory owned by
    another user or that users other than its owner may write to, where they could plant or
    swap files.
    """
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if sys.platform != "win32":
        if st.st_uid != os.geteuid():
            return f"is owned by another user (uid {st.st_uid})"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def unsafe_file(path: str) -> str | None:
    """Why the spill must not read or write the file ``path``, or None (absent is fine)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    return None


def make_dirs(path: Path) -> None:
    """Create ``path`` and any missing parent, each readable and writable by this user only."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process: checked like any other
        if sys.platform != "win32" and stat.S_IMODE(os.lstat(directory).st_mode) != DIR_MODE:
            os.chmod(directory, DIR_MODE)  # a umask taking the owner's own bits away


def read_acked(path: str) -> set[uuid.UUID]:
    try:
        with open(os.open(path, os.O_RDONLY | O_BINARY | O_NOFOLLOW), "rb") as f:
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
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW)
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
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | O_BINARY | O_NOFOLLOW
        fd = os.open(path + ACKED_SUFFIX, flags, 0o600)
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
    __slots__ = (
        "acked",
        "counted",
        "frames",
        "owned",
        "parsed",
        "path",
        "size",
        "unreadable",
        "written",
    )

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
        # Pending batches this process appended here and has neither seen acked nor reported
        # lost: id -> records. What a parse does not find sound is lost, even if the damage took
        # its header; so is all of it if the file goes.
        self.written: dict[uuid.UUID, int] = {}
        # Damage already counted: batch ids, or the offsets of stretches without a header.
        self.counted: set[uuid.UUID | int] = set()
        # Holds frames in a format this version cannot read: never deleted here.
        self.unreadable = False


class Area:
    """One directory of segments: pending (replayed) or rejected (kept aside)."""

    __slots__ = (
        "batches",
        "bytes",
        "current",
        "directory",
        "fd",
        "lost",
        "records",
        "refused",
        "segments",
    )

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.segments: dict[str, Segment] = {}
        self.current: Segment | None = None
        self.fd = -1
        self.batches = 0
        self.records = 0
        self.bytes = 0
        # (id, records) of batches this process wrote that are gone, until take_lost() asks.
        self.lost: list[tuple[uuid.UUID, int]] = []
        self.refused: set[str] = set()  # files left alone (symbolic links...), said once

    def count(self, seg: Segment, sign: int) -> None:
        self.batches += sign * len(seg.frames)
        self.records += sign * sum(seg.frames.values())
        self.bytes += sign * seg.size

    # The methods below are called with the owning Spill's lock held.

    def refresh(self) -> list[tuple[str, str]]:
        """Pick up the segments other processes added, forget the vanished; returns the files
        newly refused, with why."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            names = []  # the whole directory went: so did every segment in it
        except OSError:
            return []  # unreadable for now: forget nothing
        directory = str(self.directory)
        refused: list[tuple[str, str]] = []
        present = {os.path.join(directory, n) for n in names if n.endswith(SEGMENT_SUFFIX)}
        for name in names:
            if name.endswith(SEGMENT_SUFFIX + ACKED_SUFFIX):
                path = os.path.join(directory, name)
                if path[: -len(ACKED_SUFFIX)] not in present:
                    _unlink(path)  # left by a crash between deleting a segment and its sidecar
        for path, seg in list(self.segments.items()):
            if path not in present and not seg.owned:
                self.lose(seg)
                self.forget(seg)
        for path in sorted(present - self.segments.keys()):
            unsafe = [(p, why) for p in (path, path + ACKED_SUFFIX) if (why := unsafe_file(p))]
            if unsafe:
                if path not in self.refused:
                    self.refused.add(path)
                    refused.extend(unsafe)
                continue
            try:
                size, frames = scan_headers(path, O_BINARY | O_NOFOLLOW)
            except OSError:
                continue
            acked = read_acked(path + ACKED_SUFFIX)
            for bid in acked:
                frames.pop(bid, None)
            seg = Segment(path, size, frames, acked)
            self.segments[path] = seg
            self.count(seg, 1)
        self.refused &= present
        return refused

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
        # Never what this version cannot read: a newer atrace may still replay it.
        if seg.unreadable:
            return False
        # The segment goes first: a crash before its sidecar goes leaves only an orphan sidecar.
        if not _unlink(seg.path):
            return False
        _unlink(seg.path + ACKED_SUFFIX)
        self.forget(seg)
        return True

    def lose(self, seg: Segment) -> None:
        """Report what this process wrote to ``seg`` and nobody acked as lost."""
        self.lost.extend((bid, n) for bid, n in seg.written.items() if bid not in seg.acked)
        seg.written.clear()

    def forget(self, seg: Segment) -> None:
        if self.segments.pop(seg.path, None) is seg:
            self.count(seg, -1)
