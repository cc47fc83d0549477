"""The disk spill loses nothing silently: damage is counted and logged, lost batches of this
process are reported, newer formats are left alone, and unsafe directories and links refused."""

from __future__ import annotations

import logging
import os
import stat
import struct
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from atrace._delivery.spill import Spill, SpilledBatch
from atrace._delivery.spill.frames import make_frame

ROWS = [(1, "one", None, b"{}"), (2, "two", 7, b'{"k":1}'), (3, "three", None, None)]

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX owners, modes and links")


@pytest.fixture
def spill_dir(tmp_path: Path) -> Path:
    """A spill directory of the test's own."""
    return tmp_path / "spill"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Records of the atrace logger, warnings and worse."""
    with caplog.at_level(logging.WARNING, logger="atrace"):
        yield caplog


def lines_naming(caplog: pytest.LogCaptureFixture, path: object) -> list[str]:
    """The atrace log lines that name ``path``."""
    return [
        r.getMessage() for r in caplog.records if r.name == "atrace" and str(path) in r.getMessage()
    ]


def segment_files(directory: Path, area: str = "pending") -> list[Path]:
    """The segment files of one area, oldest first."""
    folder = directory / area
    return sorted(folder.glob("*.seg")) if folder.is_dir() else []


def drain(spill: Spill) -> list[SpilledBatch]:
    """Every batch the spill replays now, each acked."""
    out = []
    for batch in spill.replay():
        out.append(batch)
        spill.ack(batch)
    return out


def frame_starts(data: bytes) -> list[int]:
    """Offsets of the frames' magic in a segment."""
    return [i for i in range(len(data)) if data.startswith(b"ATSP", i)]


def flip_frame(segment: Path, index: int) -> None:
    """Flip one payload byte of frame ``index``: its header stays readable, its CRC fails."""
    data = bytearray(segment.read_bytes())
    starts = [*frame_starts(bytes(data)), len(data)]
    data[(starts[index] + 34 + starts[index + 1]) // 2] ^= 0x01
    segment.write_bytes(bytes(data))


def payload_of(batch_id: uuid.UUID, n: int = 0) -> bytes:
    """A decodable payload of ``n`` empty rows."""
    return orjson.dumps({"id": str(batch_id), "reason": "r", "n": n, "enc": "", "cols": []})


def newer_frame(batch_id: uuid.UUID, *, version: int = 2, flags: int = 0) -> bytes:
    """A frame as a newer atrace might write it: a sound checksum over a header this version
    does not know (another version, or a flag)."""
    head = struct.pack(">BBII16s", version, flags, 1, 5, batch_id.bytes)
    payload = b"\x00new\x01"
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"ATSP" + head + struct.pack(">I", crc) + payload


def write_segment(spill_dir: Path, data: bytes, *, age: int = 0) -> Path:
    """A segment file written by hand, named ``age`` seconds in the past."""
    folder = spill_dir / "pending"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{time.time_ns() - age * 10**9:020d}-1-00000000.seg"
    path.write_bytes(data)
    return path


def written_by_another(spill_dir: Path, count: int) -> tuple[list[uuid.UUID], Path]:
    """``count`` batches in one closed segment, written by another Spill than the test's."""
    before = set(segment_files(spill_dir))
    writer = Spill(spill_dir)
    ids = [uuid.uuid4() for _ in range(count)]
    for bid in ids:
        assert writer.append(bid, ROWS)
    writer.close()
    (segment,) = set(segment_files(spill_dir)) - before
    return ids, segment


class TestDamage:
    def test_own_segment_damaged_after_a_replay_is_counted_logged_and_lost(
        self, spill_dir: Path, logs: pytest.LogCaptureFixture
    ) -> None:
        """Damage found by a later replay of a segment this process wrote is counted and logged
        once, and take_lost() hands back the batch it held, once."""
        spill = Spill(spill_dir)
        ids = [uuid.uuid4() for _ in range(3)]
        for bid in ids:
            assert spill.append(bid, ROWS)
        # A replay that stops at its first batch (the sink is down): the segment is parsed.
        pass_one = spill.replay()
        assert next(pass_one).batch_id == ids[0]
        pass_one.close()
        (segment,) = segment_files(spill_dir)
        flip_frame(segment, 1)
        assert [b.batch_id for b in spill.replay()] == [ids[0], ids[2]]
        assert spill.stats().corrupt_skipped == 1
        assert len(lines_naming(logs, segment)) == 1
        assert spill.take_lost() == [(ids[1], 3)]
        assert spill.take_lost() == []
        # Another pass finds the same damage: not counted, logged or reported again.
        assert [b.batch_id for b in drain(spill)] == [ids[0], ids[2]]
        assert spill.stats().corrupt_skipped == 1
        assert len(lines_naming(logs, segment)) == 1
        assert spill.take_lost() == []

    def test_foreign_segment_damage_is_counted_and_logged_not_reported_lost(
        self, spill_dir: Path, logs: pytest.LogCaptureFixture
    ) -> None:
        """Damage in a segment another process wrote is counted and logged with its path; it is
        not this process's loss."""
        ids, segment = written_by_another(spill_dir, 3)
        flip_frame(segment, 0)
        reader = Spill(spill_dir)
        assert [b.batch_id for b in drain(reader)] == ids[1:]
        assert reader.stats().corrupt_skipped == 1
        (line,) = lines_naming(logs, segment)
        assert "damaged" in line
        assert reader.take_lost() == []

    def test_destroyed_header_of_an_own_batch_is_still_known_lost(
        self, spill_dir: Path, logs: pytest.LogCaptureFixture
    ) -> None:
        """A frame whose magic and header are gone is reported lost by its id, counted once."""
        spill = Spill(spill_dir)
        ids = [uuid.uuid4() for _ in range(3)]
        for bid in ids:
            assert spill.append(bid, ROWS[:2])
        spill.close()
        (segment,) = segment_files(spill_dir)
        data = bytearray(segment.read_bytes())
        start = frame_starts(bytes(data))[1]
        data[start : start + 34] = bytes(34)
        segment.write_bytes(bytes(data))
        assert [b.batch_id for b in drain(spill)] == [ids[0], ids[2]]
        assert spill.take_lost() == [(ids[1], 2)]
        assert spill.stats().corrupt_skipped == 1
        assert len(lines_naming(logs, segment)) == 1

    def test_own_segment_deleted_by_hand_reports_its_batches_lost(self, spill_dir: Path) -> None:
        """A segment this process wrote that vanished: its unacked batches are lost."""
        spill = Spill(spill_dir)
        ids = [uuid.uuid4() for _ in range(2)]
        for bid in ids:
            assert spill.append(bid, ROWS)
        spill.close()
        (segment,) = segment_files(spill_dir)
        segment.unlink()
        assert drain(spill) == []
        assert sorted(spill.take_lost()) == sorted((bid, 3) for bid in ids)
        assert spill.stats().pending_batches == 0

    def test_acked_and_rejected_batches_are_never_reported_lost(self, spill_dir: Path) -> None:
        """Delivered batches, and batches kept apart as rejected, are not in take_lost()."""
        spill = Spill(spill_dir)
        assert spill.append(uuid.uuid4(), ROWS)
        assert spill.append(uuid.uuid4(), ROWS, permanent=True)
        assert len(drain(spill)) == 1
        for segment in segment_files(spill_dir, "rejected"):
            segment.unlink()
        assert drain(spill) == []
        assert spill.purge(rejected=True) == 0
        assert spill.take_lost() == []

    def test_purged_own_batches_are_reported_lost(self, spill_dir: Path) -> None:
        """Batches this process appended and then purged are handed back by take_lost()."""
        spill = Spill(spill_dir)
        bid = uuid.uuid4()
        assert spill.append(bid, ROWS)
        assert spill.purge() == 3
        assert spill.take_lost() == [(bid, 3)]


class TestNewerFormat:
    def test_newer_version_is_left_in_place_reported_and_does_not_block_the_rest(
        self, spill_dir: Path, logs: pytest.LogCaptureFixture
    ) -> None:
        """A segment of version-2 frames survives replays and purge, is reported once and not
        counted corrupt, while the segments around it replay."""
        newer = write_segment(spill_dir, newer_frame(uuid.uuid4()) * 2, age=60)
        ids, _segment = written_by_another(spill_dir, 2)
        spill = Spill(spill_dir)
        assert [b.batch_id for b in drain(spill)] == ids
        assert [b.batch_id for b in drain(spill)] == []
        stats = spill.stats()
        assert stats.unreadable_segments == 1 and stats.corrupt_skipped == 0
        assert newer.exists()
        (line,) = lines_naming(logs, newer)
        assert "version 2" in line
        assert spill.purge() == 0
        assert newer.exists() and segment_files(spill_dir) == [newer]
        # A fresh process sees the same file the same way.
        again = Spill(spill_dir)
        assert drain(again) == [] and again.stats().unreadable_segments == 1
        assert again.stats().corrupt_skipped == 0 and newer.exists()

    def test_readable_frames_beside_newer_ones_replay_and_the_file_stays(
        self, spill_dir: Path
    ) -> None:
        """In a segment mixing both formats the known frames replay; acking them leaves the
        file."""
        good = uuid.uuid4()
        mixed = newer_frame(uuid.uuid4()) + make_frame(good, 0, payload_of(good))
        path = write_segment(spill_dir, mixed)
        spill = Spill(spill_dir)
        assert [b.batch_id for b in drain(spill)] == [good]
        assert path.exists() and spill.stats().unreadable_segments == 1
        assert drain(Spill(spill_dir)) == []  # the ack is remembered; the file is kept

    def test_sound_frame_with_an_unknown_flag_is_left_alone(self, spill_dir: Path) -> None:
        """A version-1 frame with a flag this version does not know is left, not decoded and
        counted as damage."""
        path = write_segment(spill_dir, newer_frame(uuid.uuid4(), version=1, flags=0x02))
        spill = Spill(spill_dir)
        assert drain(spill) == []
        stats = spill.stats()
        assert (stats.unreadable_segments, stats.corrupt_skipped) == (1, 0)
        assert path.exists()

    def test_flipped_version_byte_is_damage_not_a_newer_format(
        self, spill_dir: Path, logs: pytest.LogCaptureFixture
    ) -> None:
        """A version byte damaged into 2 is told apart by the checksum: counted and logged."""
        ids, segment = written_by_another(spill_dir, 2)
        data = bytearray(segment.read_bytes())
        data[4] = 2  # the first frame's version
        segment.write_bytes(bytes(data))
        spill = Spill(spill_dir)
        assert [b.batch_id for b in drain(spill)] == ids[1:]
        stats = spill.stats()
        assert (stats.corrupt_skipped, stats.unreadable_segments) == (1, 0)
        (line,) = lines_naming(logs, segment)
        assert "damaged" in line


@posix_only
class TestUnsafePaths:
    def refused(self, spill: Spill, caplog: pytest.LogCaptureFixture, path: Path, why: str) -> None:
        """Two appends to ``spill`` are refused and counted, and one line names ``path``."""
        assert not spill.append(uuid.uuid4(), ROWS)
        assert not spill.append(uuid.uuid4(), ROWS[:1], permanent=True)
        assert spill.stats().dropped_unwritable == 4
        (line,) = lines_naming(caplog, path)
        assert why in line

    def test_symlinked_spill_dir_is_refused(
        self, tmp_path: Path, spill_dir: Path, logs: pytest.LogCaptureFixture
    ) -> None:
        """A spill directory that is a symbolic link is not written through."""
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        spill_dir.symlink_to(target)
        self.refused(Spill(spill_dir), logs, spill_dir, "symbolic link")
        assert list(target.iterdir()) == []

    def test_symlinked_pending_dir_is_refused(
        self, tmp_path: Path, spill_dir: Path, logs: pytest.LogCaptureFixture
    ) -> None:
        """A ``pending`` folder that is a symbolic link is neither written nor read."""
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        spill_dir.mkdir(mode=0o700)
        (spill_dir / "pending").symlink_to(target)
        spill = Spill(spill_dir)
        assert not spill.append(uuid.uuid4(), ROWS)
        assert spill.stats().dropped_unwritable == 3
        assert len(lines_naming(logs, spill_dir / "pending")) == 1
        assert list(target.iterdir()) == []

    @pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
    def test_dir_writable_by_others_is_refused(
        self, spill_dir: Path, logs: pytest.LogCaptureFixture, mode: int
    ) -> None:
        """A pre-created directory that group or others may write to is not used."""
        spill_dir.mkdir()
        os.chmod(spill_dir, mode)
        self.refused(Spill(spill_dir), logs, spill_dir, "writable by other users")
        assert not (spill_dir / "pending").exists()

    @pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs chown")
    def test_dir_owned_by_another_user_is_refused(
        self, spill_dir: Path, logs: pytest.LogCaptureFixture
    ) -> None:
        """A pre-created directory owned by another user is not used, whatever its mode."""
        spill_dir.mkdir(mode=0o700)
        os.chown(spill_dir, 65534, -1)
        self.refused(Spill(spill_dir), logs, spill_dir, "another user")

    def test_refused_dir_is_not_read_either(
        self, spill_dir: Path, logs: pytest.LogCaptureFixture
    ) -> None:
        """Segments in a directory opened up to others are neither replayed nor deleted."""
        written_by_another(spill_dir, 2)
        os.chmod(spill_dir / "pending", 0o777)
        spill = Spill(spill_dir)
        assert drain(spill) == [] and spill.purge() == 0
        assert len(segment_files(spill_dir)) == 1
        assert len(lines_naming(logs, spill_dir / "pending")) == 1

    def test_symlinked_segment_is_left_alone(
        self, tmp_path: Path, spill_dir: Path, logs: pytest.LogCaptureFixture
    ) -> None:
        """A segment name that is a symbolic link is not followed, replayed nor deleted."""
        _ids, segment = written_by_another(spill_dir, 1)
        outside = tmp_path / "outside.seg"
        segment.rename(outside)
        segment.symlink_to(outside)
        spill = Spill(spill_dir)
        assert drain(spill) == [] and spill.purge() == 0
        assert segment.is_symlink() and outside.exists()
        (line,) = lines_naming(logs, segment)
        assert "symbolic link" in line

    def test_symlinked_sidecar_is_not_written_through(
        self, tmp_path: Path, spill_dir: Path, logs: pytest.LogCaptureFixture
    ) -> None:
        """An acks sidecar that is a symbolic link is left alone, and so is its segment."""
        _ids, segment = written_by_another(spill_dir, 1)
        outside = tmp_path / "outside"
        outside.write_bytes(b"")
        sidecar = Path(str(segment) + ".acked")
        sidecar.symlink_to(outside)
        spill = Spill(spill_dir)
        assert drain(spill) == []
        assert outside.read_bytes() == b"" and segment.exists()
        assert len(lines_naming(logs, sidecar)) == 1

    def test_new_dirs_and_their_parents_are_private(self, tmp_path: Path) -> None:
        """Directories the spill creates, parents included, are 0700 even under umask 0."""
        spill_dir = tmp_path / "a" / "b" / "spill"
        old = os.umask(0)
        try:
            spill = Spill(spill_dir)
            assert spill.append(uuid.uuid4(), ROWS)
            assert spill.append(uuid.uuid4(), ROWS, permanent=True)
        finally:
            os.umask(old)
        made = [tmp_path / "a", tmp_path / "a" / "b", spill_dir]
        made += [spill_dir / "pending", spill_dir / "rejected"]
        assert [stat.S_IMODE(p.stat().st_mode) for p in made] == [0o700] * 5
