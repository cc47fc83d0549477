"""The disk spill: round trips, order, acks, the size cap, damage, rejected batches, processes."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import orjson
import pytest

from atrace._delivery import spill as spill_module
from atrace._delivery.spill import Spill, SpilledBatch, SpillStats, default_spill_dir
from atrace._delivery.spill.frames import make_frame
from atrace._postgres.embedded import data_dir
from atrace.errors import ConfigError

SEED = 20240611
Row = tuple[Any, ...]


def make_rows(rng: random.Random, n: int) -> list[Row]:
    """Rows shaped like the encoder's: ints, hex text, None, unicode text, attrs as JSON bytes."""
    rows = []
    for i in range(n):
        attrs = orjson.dumps({"i": i, "user": "zoë", "tags": ["☃", rng.random()]})
        rows.append(
            (
                1_700_000_000_000_000_000 + i,
                rng.choice((0, 1, 2, 3)),
                20,
                f"{rng.getrandbits(128):032x}",
                rng.getrandbits(64) - (1 << 63),
                None,
                rng.getrandbits(40),
                1,
                "checkout",
                None,
                "web-1",
                4242,
                "app.orders",
                f"order {i} charged ✓",
                attrs if i % 5 else None,
                None,
                None,
                None,
                "app/orders.py:42",
            )
        )
    return rows


@pytest.fixture
def rng() -> random.Random:
    """A seeded generator; the seed is printed so a failure can be replayed."""
    print(f"spill test seed: {SEED}")
    return random.Random(SEED)


@pytest.fixture
def spill_dir(tmp_path: Path) -> Path:
    """A spill directory of the test's own."""
    return tmp_path / "spill"


def segment_files(directory: Path, area: str = "pending") -> list[Path]:
    """The segment files of one area, oldest first."""
    folder = directory / area
    return sorted(folder.glob("*.seg")) if folder.is_dir() else []


def drain(spill: Spill, *, ack: bool = True, rejected: bool = False) -> list[SpilledBatch]:
    """Every batch the spill replays now, acked unless told otherwise."""
    out = []
    for batch in spill.replay(rejected=rejected):
        out.append(batch)
        if ack:
            spill.ack(batch)
    return out


def types_of(rows: list[Row]) -> list[list[type]]:
    return [[type(v) for v in row] for row in rows]


def run_in_child(body: Any) -> int:
    """Run ``body()`` in a forked child; its exit status is 0 if it returned, 1 if it raised."""
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; the child only runs body.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class TestRoundTrip:
    def test_every_value_type_comes_back_equal_and_of_the_same_type(self, spill_dir: Path) -> None:
        """ints (64-bit extremes), None, unicode text, JSON bytes and empty batches round-trip."""
        rows: list[Row] = [
            (-(1 << 63), (1 << 63) - 1, (1 << 64) - 1, 0, None, "zoë ☃ 𝄞", b'{"k":"v\xc3\xa9"}'),
            (-1, 1, 2, 3, None, "", b"{}"),
            (5, 6, 7, 8, None, "x", None),
        ]
        spill = Spill(spill_dir)
        ids = [uuid.uuid4(), uuid.uuid4()]
        assert spill.append(ids[0], rows, reason="sink down")
        assert spill.append(ids[1], [])
        got = drain(spill)
        assert [b.batch_id for b in got] == ids
        assert got[0].rows == rows and types_of(got[0].rows) == types_of(rows)
        assert got[0].reason == "sink down" and got[0].records == 3
        assert got[1].rows == [] and got[1].records == 0 and got[1].reason == "undelivered"

    def test_awkward_values_round_trip_too(self, spill_dir: Path) -> None:
        """Undecodable bytes, bytes beside text, huge ints, surrogates, infinities, ragged rows."""
        rows: list[Row] = [
            (b"\xff\x00\xfe", b"a", 1 << 80, "lone \ud800", 1.5, True),
            (None, "text", -(1 << 70), "fine", None, False),
            (b"", 3),
            (),
            (float("inf"), float("-inf"), 0.25, -0.0),
        ]
        spill = Spill(spill_dir)
        assert spill.append(uuid.uuid4(), rows)
        (batch,) = drain(spill)
        assert batch.rows == rows and types_of(batch.rows) == types_of(rows)

    def test_nan_comes_back_as_nan(self, spill_dir: Path) -> None:
        """A NaN float is kept as NaN, not turned into None as plain JSON would."""
        spill = Spill(spill_dir)
        assert spill.append(uuid.uuid4(), [(float("nan"), 1.0)])
        ((value, other),) = drain(spill)[0].rows
        assert math.isnan(value) and other == 1.0

    def test_encoder_shaped_rows_round_trip(self, spill_dir: Path, rng: random.Random) -> None:
        """A batch of encoder-shaped rows comes back exactly, attrs bytes included."""
        rows = make_rows(rng, 200)
        spill = Spill(spill_dir)
        assert spill.append(uuid.uuid4(), rows)
        (batch,) = drain(spill)
        assert batch.rows == rows and types_of(batch.rows) == types_of(rows)


class TestOrder:
    def test_order_is_kept_across_segment_rotation(
        self, spill_dir: Path, rng: random.Random
    ) -> None:
        """With small segments, batches spread over several files and replay in append order."""
        spill = Spill(spill_dir, segment_bytes=4096)
        ids = [uuid.uuid4() for _ in range(30)]
        for bid in ids:
            assert spill.append(bid, make_rows(rng, 5))
        assert len(segment_files(spill_dir)) > 3
        assert spill.stats().segments == len(segment_files(spill_dir))
        assert [b.batch_id for b in drain(spill)] == ids

    def test_segments_of_an_earlier_process_replay_first(
        self, spill_dir: Path, rng: random.Random
    ) -> None:
        """Segments left by a previous Spill replay before this one's, oldest first."""
        earlier = Spill(spill_dir)
        first = uuid.uuid4()
        earlier.append(first, make_rows(rng, 2))
        earlier.close()
        spill = Spill(spill_dir)
        second = uuid.uuid4()
        spill.append(second, make_rows(rng, 2))
        assert [b.batch_id for b in drain(spill)] == [first, second]


class TestAck:
    def test_fully_acked_segments_are_deleted(self, spill_dir: Path, rng: random.Random) -> None:
        """Acking every batch of a segment deletes its file; stats go back to zero."""
        spill = Spill(spill_dir, segment_bytes=4096)
        for _ in range(10):
            spill.append(uuid.uuid4(), make_rows(rng, 5))
        assert segment_files(spill_dir)
        got = drain(spill)
        assert len(got) == 10
        assert segment_files(spill_dir) == []
        assert list((spill_dir / "pending").iterdir()) == []
        stats = spill.stats()
        assert (stats.pending_batches, stats.pending_records, stats.pending_bytes) == (0, 0, 0)
        assert (stats.replayed_batches, stats.replayed_records) == (10, 50)
        assert stats.segments == 0

    def test_acked_batches_are_not_replayed_after_a_restart(
        self, spill_dir: Path, rng: random.Random
    ) -> None:
        """Batches acked before a restart stay acked; only the others replay in the new Spill."""
        spill = Spill(spill_dir)
        ids = [uuid.uuid4() for _ in range(4)]
        for bid in ids:
            spill.append(bid, make_rows(rng, 3))
        replay = spill.replay()
        for _ in range(2):
            spill.ack(next(replay))
        replay.close()
        del spill  # no close(): as if the process died here

        restarted = Spill(spill_dir)
        stats = restarted.stats()
        assert (stats.pending_batches, stats.pending_records) == (2, 6)
        assert [b.batch_id for b in drain(restarted)] == ids[2:]
        assert segment_files(spill_dir) == []

    def test_a_torn_ack_line_loses_only_that_ack(self, spill_dir: Path, rng: random.Random) -> None:
        """A sidecar torn by a crash mid-line keeps the acks before and after the tear."""
        spill = Spill(spill_dir)
        ids = [uuid.uuid4() for _ in range(4)]
        for bid in ids:
            spill.append(bid, make_rows(rng, 1))
        replay = spill.replay()
        spill.ack(next(replay))
        replay.close()
        (segment,) = segment_files(spill_dir)
        with open(f"{segment}.acked", "ab") as sidecar:
            sidecar.write(b"\n" + ids[1].hex.encode()[:9])  # a crash mid-way through an ack
        replay = Spill(spill_dir).replay()
        second = next(replay)
        assert second.batch_id == ids[1]
        restarted = Spill(spill_dir)
        restarted.ack(second)
        replay.close()
        assert [b.batch_id for b in drain(Spill(spill_dir))] == ids[2:]

    def test_unacked_batches_replay_again(self, spill_dir: Path, rng: random.Random) -> None:
        """A batch that was replayed but not acked is still there next time."""
        spill = Spill(spill_dir)
        bid = uuid.uuid4()
        spill.append(bid, make_rows(rng, 1))
        assert [b.batch_id for b in drain(spill, ack=False)] == [bid]
        assert [b.batch_id for b in drain(spill)] == [bid]
        assert drain(spill) == []

    def test_ack_twice_counts_once(self, spill_dir: Path, rng: random.Random) -> None:
        """A second ack of the same batch changes nothing."""
        spill = Spill(spill_dir)
        spill.append(uuid.uuid4(), make_rows(rng, 2))
        spill.append(uuid.uuid4(), make_rows(rng, 2))
        first = next(spill.replay())
        spill.ack(first)
        spill.ack(first)
        assert spill.stats().replayed_batches == 1
        assert spill.stats().pending_batches == 1


class TestCap:
    def test_append_past_the_cap_is_refused_and_counted(
        self, spill_dir: Path, rng: random.Random
    ) -> None:
        """Once the cap would be exceeded, append returns False and dropped_full counts records."""
        spill = Spill(spill_dir, max_bytes=20_000)
        accepted = 0
        while spill.append(uuid.uuid4(), make_rows(rng, 10)):
            accepted += 1
        assert accepted >= 1
        stats = spill.stats()
        assert stats.dropped_full == 10
        assert stats.pending_batches == accepted and stats.pending_bytes <= 20_000
        assert not spill.append(uuid.uuid4(), make_rows(rng, 7))
        assert spill.stats().dropped_full == 17

    def test_cap_counts_segments_left_by_earlier_processes(
        self, spill_dir: Path, rng: random.Random
    ) -> None:
        """Bytes already in the directory count against a new Spill's cap."""
        earlier = Spill(spill_dir)
        earlier.append(uuid.uuid4(), make_rows(rng, 20))
        earlier.close()
        on_disk = sum(p.stat().st_size for p in segment_files(spill_dir))
        spill = Spill(spill_dir, max_bytes=on_disk + 100)
        assert spill.stats().pending_bytes == on_disk
        assert not spill.append(uuid.uuid4(), make_rows(rng, 20))
        assert spill.stats().dropped_full == 20

    def test_replayed_space_is_given_back(self, spill_dir: Path, rng: random.Random) -> None:
        """After a full spill is replayed and acked, appends are accepted again."""
        spill = Spill(spill_dir, max_bytes=10_000)
        while spill.append(uuid.uuid4(), make_rows(rng, 5)):
            pass
        drain(spill)
        assert spill.append(uuid.uuid4(), make_rows(rng, 5))


class TestUnwritable:
    def test_directory_under_a_file_refuses_without_raising(
        self, tmp_path: Path, rng: random.Random
    ) -> None:
        """A spill path that cannot be a directory: append returns False and is counted."""
        blocker = tmp_path / "blocker"
        blocker.write_text("a file, not a directory")
        for path in (blocker, blocker / "spill"):
            spill = Spill(path)
            assert not spill.append(uuid.uuid4(), make_rows(rng, 3))
            assert not spill.append(uuid.uuid4(), make_rows(rng, 4), permanent=True)
            stats = spill.stats()
            assert stats.dropped_unwritable == 7
            assert stats.spilled_batches == 0 and stats.pending_batches == 0
            assert drain(spill) == [] and spill.purge() == 0
            spill.close()

    @pytest.mark.skipif(sys.platform == "win32", reason="needs fork and RLIMIT_FSIZE")
    def test_disk_full_mid_frame_leaves_no_torn_frame(
        self, spill_dir: Path, rng: random.Random
    ) -> None:
        """A write cut short (file size limit) is refused, counted, and truncated away."""
        import resource

        kept = uuid.uuid4()
        small, big = make_rows(rng, 2), make_rows(rng, 200)

        def child() -> None:
            spill = Spill(spill_dir)
            assert spill.append(kept, small)
            (segment,) = segment_files(spill_dir)
            size = segment.stat().st_size
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, size + 100))
            assert not spill.append(uuid.uuid4(), big)
            assert spill.stats().dropped_unwritable == 200
            assert segment.stat().st_size == size

        assert run_in_child(child) == 0
        spill = Spill(spill_dir)
        assert [b.batch_id for b in drain(spill)] == [kept]
        assert spill.stats().corrupt_skipped == 0


class TestCorruption:
    def _three_batches(self, spill_dir: Path, rng: random.Random) -> tuple[list[uuid.UUID], Path]:
        spill = Spill(spill_dir)
        ids = [uuid.uuid4() for _ in range(3)]
        for bid in ids:
            spill.append(bid, make_rows(rng, 4))
        spill.close()
        (segment,) = segment_files(spill_dir)
        return ids, segment

    def test_truncated_last_frame_is_skipped(self, spill_dir: Path, rng: random.Random) -> None:
        """A segment cut off mid-frame replays the frames before the cut and counts the damage."""
        ids, segment = self._three_batches(spill_dir, rng)
        os.truncate(segment, segment.stat().st_size - 5)
        spill = Spill(spill_dir)
        assert [b.batch_id for b in drain(spill)] == ids[:2]
        assert spill.stats().corrupt_skipped == 1
        assert segment_files(spill_dir) == []

    def test_flipped_byte_skips_only_that_frame(self, spill_dir: Path, rng: random.Random) -> None:
        """A checksum mismatch in the middle frame skips it; the frames around it replay."""
        ids, segment = self._three_batches(spill_dir, rng)
        data = bytearray(segment.read_bytes())
        starts = [i for i in range(len(data)) if data.startswith(b"ATSP", i)]
        assert len(starts) == 3
        middle = (starts[1] + starts[2]) // 2
        data[middle] ^= 0x01
        segment.write_bytes(bytes(data))
        spill = Spill(spill_dir)
        assert [b.batch_id for b in drain(spill)] == [ids[0], ids[2]]
        assert spill.stats().corrupt_skipped == 1

    def test_damaged_header_resynchronises_on_the_next_frame(
        self, spill_dir: Path, rng: random.Random
    ) -> None:
        """A corrupt length field does not hide the frames after it."""
        ids, segment = self._three_batches(spill_dir, rng)
        data = bytearray(segment.read_bytes())
        data[10:14] = b"\xff\xff\xff\x00"  # the first frame's payload length
        segment.write_bytes(bytes(data))
        spill = Spill(spill_dir)
        assert [b.batch_id for b in drain(spill)] == ids[1:]
        assert spill.stats().corrupt_skipped == 1

    def test_sound_frame_with_unreadable_payload_is_skipped(self, spill_dir: Path) -> None:
        """A frame whose checksum holds but whose payload is not a batch is counted, not raised."""
        (spill_dir / "pending").mkdir(parents=True)
        good = uuid.uuid4()
        data = make_frame(uuid.uuid4(), 1, b"not json") + make_frame(
            good, 0, orjson.dumps({"id": str(good), "reason": "r", "n": 0, "enc": "", "cols": []})
        )
        (spill_dir / "pending" / f"{time.time_ns():020d}-1-00000000.seg").write_bytes(data)
        spill = Spill(spill_dir)
        assert [b.batch_id for b in drain(spill)] == [good]
        assert spill.stats().corrupt_skipped == 1
        assert segment_files(spill_dir) == []

    def test_garbage_segment_never_raises(self, spill_dir: Path) -> None:
        """A segment of random bytes replays nothing, is counted, and is removed."""
        garbage = random.Random(SEED).randbytes(3000)
        (spill_dir / "pending").mkdir(parents=True)
        (spill_dir / "pending" / f"{time.time_ns():020d}-1-00000000.seg").write_bytes(garbage)
        spill = Spill(spill_dir)
        assert drain(spill) == []
        assert spill.stats().corrupt_skipped == 1
        assert segment_files(spill_dir) == []


class TestRejected:
    def test_permanent_batches_are_kept_apart_and_purged_on_request(
        self, spill_dir: Path, rng: random.Random
    ) -> None:
        """permanent=True goes to the rejected area: never replayed, cleared by purge(rejected)."""
        spill = Spill(spill_dir)
        pending_id, rejected_id = uuid.uuid4(), uuid.uuid4()
        spill.append(pending_id, make_rows(rng, 2))
        spill.append(rejected_id, make_rows(rng, 3), reason="bad data", permanent=True)
        stats = spill.stats()
        assert (stats.pending_batches, stats.rejected_batches, stats.rejected_records) == (1, 1, 3)
        assert [b.batch_id for b in drain(spill)] == [pending_id]
        assert segment_files(spill_dir, "rejected")
        assert spill.purge(rejected=True) == 3
        assert segment_files(spill_dir, "rejected") == []
        assert spill.stats().rejected_batches == 0

    def test_rejected_batches_can_be_read_on_request(
        self, spill_dir: Path, rng: random.Random
    ) -> None:
        """replay(rejected=True) reads the rejected batches, with their reason."""
        spill = Spill(spill_dir)
        bid = uuid.uuid4()
        spill.append(bid, make_rows(rng, 3), reason="schema mismatch", permanent=True)
        (batch,) = drain(spill, ack=False, rejected=True)
        assert (batch.batch_id, batch.reason, batch.records) == (bid, "schema mismatch", 3)

    def test_purge_pending_returns_records(self, spill_dir: Path, rng: random.Random) -> None:
        """purge() deletes the pending batches and says how many records went."""
        spill = Spill(spill_dir, segment_bytes=2048)
        for _ in range(6):
            spill.append(uuid.uuid4(), make_rows(rng, 4))
        assert spill.purge() == 24
        assert segment_files(spill_dir) == [] and drain(spill) == []
        assert spill.stats().pending_records == 0


class TestProcesses:
    def test_segment_locked_by_another_spill_is_not_replayed(
        self, spill_dir: Path, rng: random.Random
    ) -> None:
        """Another Spill skips the segment the first is still writing, and reads it once closed."""
        writer = Spill(spill_dir)
        bid = uuid.uuid4()
        writer.append(bid, make_rows(rng, 2))
        reader = Spill(spill_dir)
        assert drain(reader) == []
        assert reader.stats().pending_batches == 1
        writer.close()
        assert [b.batch_id for b in drain(reader)] == [bid]

    def test_two_replays_never_share_a_segment(self, spill_dir: Path, rng: random.Random) -> None:
        """While one replay holds a segment, another replay passes over it."""
        spill = Spill(spill_dir)
        spill.append(uuid.uuid4(), make_rows(rng, 2))
        first = spill.replay()
        batch = next(first)
        assert drain(Spill(spill_dir)) == []
        spill.ack(batch)
        first.close()

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
    def test_forked_child_writes_its_own_segments(
        self, spill_dir: Path, rng: random.Random
    ) -> None:
        """After fork the child appends to new segments and the parent's segment stays intact."""
        spill = Spill(spill_dir)
        before, in_child, after = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        spill.append(before, make_rows(rng, 3))
        (parent_segment,) = segment_files(spill_dir)
        child_rows = make_rows(rng, 4)

        def child() -> None:
            assert spill.append(in_child, child_rows)
            assert spill.stats().spilled_batches == 1

        assert run_in_child(child) == 0
        spill.append(after, make_rows(rng, 3))
        files = segment_files(spill_dir)
        assert len(files) == 2 and parent_segment in files
        (child_segment,) = [f for f in files if f != parent_segment]
        assert f"-{os.getpid()}-" not in child_segment.name
        got = drain(spill)
        assert [b.batch_id for b in got] == [before, after, in_child]
        assert got[2].rows == child_rows
        assert spill.stats().corrupt_skipped == 0

    def test_stats_while_another_thread_appends(self, spill_dir: Path, rng: random.Random) -> None:
        """stats() from one thread while another appends sees consistent, growing counts."""
        spill = Spill(spill_dir, segment_bytes=8192)
        batches = [(uuid.uuid4(), make_rows(rng, 3)) for _ in range(50)]

        def writer() -> None:
            for bid, rows in batches:
                spill.append(bid, rows)

        thread = threading.Thread(target=writer)
        thread.start()
        seen = []
        while thread.is_alive():
            stats = spill.stats()
            assert stats.pending_records == 3 * stats.pending_batches
            seen.append(stats.spilled_batches)
        thread.join()
        assert seen == sorted(seen)
        assert spill.stats().spilled_batches == 50


class TestSetup:
    def test_directory_is_created_lazily(self, spill_dir: Path, rng: random.Random) -> None:
        """Creating a Spill and reading its stats writes nothing to disk."""
        spill = Spill(spill_dir)
        assert spill.stats().pending_batches == 0
        assert not spill_dir.exists()
        spill.append(uuid.uuid4(), make_rows(rng, 1))
        assert spill_dir.is_dir()

    def test_fsync_mode_round_trips(self, spill_dir: Path, rng: random.Random) -> None:
        """With fsync=True, segments and acks are synced and batches replay as usual."""
        spill = Spill(spill_dir, fsync=True)
        ids = [uuid.uuid4(), uuid.uuid4()]
        for bid in ids:
            assert spill.append(bid, make_rows(rng, 3))
        assert [b.batch_id for b in drain(spill)] == ids
        assert segment_files(spill_dir) == []

    @pytest.mark.parametrize(
        ("field", "value"),
        [("max_bytes", -1), ("max_bytes", "1"), ("segment_bytes", 0), ("segment_bytes", True)],
    )
    def test_bad_sizes_raise_config_error(self, tmp_path: Path, field: str, value: object) -> None:
        """A bad size names the field and the value."""
        with pytest.raises(ConfigError) as info:
            Spill(tmp_path, **{field: value})  # type: ignore[arg-type]
        assert info.value.field == field

    def test_bad_size_message(self, tmp_path: Path) -> None:
        """A refused size says the field, the value and the bound."""
        with pytest.raises(ConfigError, match=r"^max_bytes=-1: expected an integer >= 0$"):
            Spill(tmp_path, max_bytes=-1)
        with pytest.raises(ConfigError, match=r"^segment_bytes=0: expected an integer >= 1$"):
            Spill(tmp_path, segment_bytes=0)

    def test_stats_are_a_frozen_keyword_only_value(self, spill_dir: Path) -> None:
        """stats() gives a keyword-only dataclass that cannot change and compares by value."""
        spill = Spill(spill_dir)
        stats = spill.stats()
        assert stats == spill.stats()
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.pending_batches = 1  # type: ignore[misc]
        with pytest.raises(TypeError):
            SpillStats(*dataclasses.astuple(stats))  # type: ignore[misc]

    def test_default_dir_blank_means_unset(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A blank ATRACE_SPILL_DIR is unset too; a set one is stripped and ~ expanded."""
        monkeypatch.setenv("ATRACE_SPILL_DIR", "   ")
        assert default_spill_dir() == data_dir() / "spill"
        monkeypatch.setenv("ATRACE_SPILL_DIR", " ~/spill-here ")
        assert default_spill_dir() == Path.home() / "spill-here"

    def test_default_dir_honours_the_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ATRACE_SPILL_DIR wins when set; empty means unset, falling back to the data dir."""
        monkeypatch.setenv("ATRACE_SPILL_DIR", str(tmp_path / "here"))
        assert default_spill_dir() == tmp_path / "here"
        monkeypatch.setenv("ATRACE_SPILL_DIR", "")
        assert default_spill_dir() == data_dir() / "spill"

    def test_all_names_the_public_api(self) -> None:
        """__all__ is a tuple of the module's real public names."""
        exported = spill_module.__all__
        assert isinstance(exported, tuple)
        assert all(hasattr(spill_module, name) for name in exported)
        defined = {
            name
            for name, value in vars(spill_module).items()
            if not name.startswith("_")
            and getattr(value, "__module__", None) == spill_module.__name__
        }
        assert defined <= set(exported)


class TestThroughput:
    def test_prints_write_and_replay_rates(self, spill_dir: Path, rng: random.Random) -> None:
        """Spill write and replay rates for encoder-shaped rows, printed rather than asserted."""
        batches = [(uuid.uuid4(), make_rows(rng, 1000)) for _ in range(20)]
        spill = Spill(spill_dir)
        start = time.perf_counter()
        for bid, rows in batches:
            assert spill.append(bid, rows)
        written = time.perf_counter() - start
        start = time.perf_counter()
        records = sum(b.records for b in drain(spill))
        replayed = time.perf_counter() - start
        assert records == 20_000
        print(
            f"spill write {records / written:,.0f} records/s, "
            f"replay+ack {records / replayed:,.0f} records/s"
        )
