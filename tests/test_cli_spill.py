"""`atrace spill status|replay|purge`, run as the installed command against spilled files."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from atrace._delivery.spill import Spill
from atrace._pipeline.encode import Encoder
from atrace._records import Row
from atrace.sinks.postgres import PostgresSink

ATRACE = str(Path(sys.executable).with_name("atrace"))
# Nothing listens on port 1: connecting fails at once.
UNREACHABLE = "postgresql://atrace@127.0.0.1:1/none"


def environment(spill_dir: Path) -> dict[str, str]:
    # A wide terminal, so rich never folds a destination key in the table.
    return {**os.environ, "ATRACE_SPILL_DIR": str(spill_dir), "COLUMNS": "200"}


def run(
    spill_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command with no terminal anywhere (stdin is /dev/null)."""
    return subprocess.run(
        [ATRACE, "spill", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment(spill_dir), **(env or {})},
    )


def run_on_terminal(spill_dir: Path, *args: str, typed: bytes = b"") -> tuple[int, str, str]:
    """The command with stdin and stderr on a pseudo-terminal, ``typed`` sent as keystrokes;
    returns the exit code, stdout, and what the terminal showed."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [ATRACE, "spill", *args],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=environment(spill_dir),
        )
    finally:
        os.close(slave)
    shown: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every end of the terminal is closed
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        if typed:
            os.write(master, typed)
        stdout, _ = proc.communicate(timeout=120)
        reader.join(timeout=10)
    finally:
        os.close(master)
    return proc.returncode, stdout.decode(), b"".join(shown).decode(errors="replace")


def make_rows(n: int, tag: str) -> list[Row]:
    """``n`` encoded log rows stamped now, messages ``tag-0`` … ``tag-(n-1)``."""
    encoder = Encoder(service="spill-cli", environment=None, host="h", pid=1)
    now = time.time_ns()
    return encoder.rows(
        [
            (
                0,
                now + i,
                20,
                None,
                None,
                None,
                None,
                0,
                None,
                "t",
                f"{tag}-{i}",
                {"i": i},
                None,
                None,
            )
            for i in range(n)
        ]
    )


def key_of(dsn: str, schema: str) -> str:
    return PostgresSink(dsn, schema=schema).spill_key


def spill(
    spill_dir: Path, dsn: str, schema: str, sizes: list[int], *, permanent: bool = False
) -> list[uuid.UUID]:
    """Spill one batch per size for the destination, oldest first; returns the batch ids."""
    store = Spill(spill_dir / key_of(dsn, schema))
    ids = []
    for n in sizes:
        batch_id = uuid.uuid4()
        assert store.append(batch_id, make_rows(n, batch_id.hex[:8]), permanent=permanent)
        ids.append(batch_id)
    store.close()
    return ids


def status(spill_dir: Path, *args: str) -> dict[str, Any]:
    done = run(spill_dir, "status", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def pending(spill_dir: Path, dsn: str, schema: str) -> tuple[int, int]:
    """(batches, records) still pending for the destination."""
    for dest in status(spill_dir)["destinations"]:
        if dest["key"] == key_of(dsn, schema):
            return dest["pending_batches"], dest["pending_records"]
    return 0, 0


def table_row(stdout: str, first_cell: str) -> list[str]:
    """The cells of the table line that starts with ``first_cell``, rich or plain."""
    for line in stdout.splitlines():
        cells = [c for c in re.split(r"\s*[│┃|]\s*|\s{2,}", line.strip()) if c]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no line for {first_cell!r} in:\n{stdout}")


def flip_middle_frame(spill_dir: Path, key: str) -> None:
    """Flip one byte inside the second of the three frames of the destination's one segment."""
    (segment,) = sorted((spill_dir / key / "pending").glob("*.seg"))
    data = bytearray(segment.read_bytes())
    starts = [m.start() for m in re.finditer(b"ATSP", bytes(data))]
    assert len(starts) == 3
    data[(starts[1] + starts[2]) // 2] ^= 0x01
    segment.write_bytes(bytes(data))


async def stored(dsn: str, schema: str) -> tuple[int, int]:
    """(rows, distinct messages) in the destination's records table."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, count(DISTINCT message) AS d FROM {schema}.records"
        )
    finally:
        await conn.close()
    return row["n"], row["d"]


@pytest.fixture
def spill_dir(tmp_path: Path) -> Path:
    """The spill directory the command is pointed at through ATRACE_SPILL_DIR."""
    return tmp_path / "spill"


class TestStatus:
    def test_nothing_spilled(self, spill_dir: Path) -> None:
        """A missing or empty spill directory is one line, exit 0, and an empty JSON object."""
        for _ in range(2):
            done = run(spill_dir, "status")
            assert done.returncode == 0, done.stderr
            assert done.stdout == f"nothing spilled in {spill_dir}\n"
            spill_dir.mkdir(exist_ok=True)
        report = status(spill_dir)
        assert report["destinations"] == []
        assert report["total"]["pending_records"] == 0

    def test_table_shows_counts_per_destination_and_total(self, spill_dir: Path) -> None:
        """The table has a row per destination with its counts, and a total row."""
        spill(spill_dir, UNREACHABLE, "one", [3, 4])
        spill(spill_dir, UNREACHABLE, "one", [2], permanent=True)
        spill(spill_dir, UNREACHABLE, "two", [5])
        done = run(spill_dir, "status")
        assert done.returncode == 0, done.stderr
        one = table_row(done.stdout, key_of(UNREACHABLE, "one"))
        two = table_row(done.stdout, key_of(UNREACHABLE, "two"))
        total = table_row(done.stdout, "total")
        # destination, pending batches, records, size, rejected batches, records, segments, corrupt
        assert one[1:3] == ["2", "7"] and one[4:] == ["1", "2", "1", "0"]
        assert two[1:3] == ["1", "5"] and two[4:] == ["0", "0", "1", "0"]
        assert total[1:3] == ["3", "12"] and total[4:] == ["1", "2", "2", "0"]
        assert one[3].endswith("B")

    def test_json_counts(self, spill_dir: Path) -> None:
        """--json gives the same counts, bytes included, per destination and in total."""
        spill(spill_dir, UNREACHABLE, "one", [3, 4])
        spill(spill_dir, UNREACHABLE, "one", [2], permanent=True)
        spill(spill_dir, UNREACHABLE, "two", [5])
        report = status(spill_dir)
        assert report["spill_dir"] == str(spill_dir)
        by_key = {d["key"]: d for d in report["destinations"]}
        one = by_key[key_of(UNREACHABLE, "one")]
        assert (one["pending_batches"], one["pending_records"]) == (2, 7)
        assert (one["rejected_batches"], one["rejected_records"]) == (1, 2)
        assert one["pending_bytes"] > 0 and one["rejected_bytes"] > 0
        assert (one["segments"], one["corrupt_skipped"]) == (1, 0)
        assert by_key[key_of(UNREACHABLE, "two")]["pending_records"] == 5
        assert report["total"]["pending_records"] == 12
        assert report["total"]["pending_bytes"] == sum(d["pending_bytes"] for d in by_key.values())

    def test_dsn_and_schema_pick_one_destination(self, spill_dir: Path) -> None:
        """Given --dsn and --schema, status shows that destination only."""
        spill(spill_dir, UNREACHABLE, "one", [3])
        spill(spill_dir, UNREACHABLE, "two", [5])
        report = status(spill_dir, "--dsn", UNREACHABLE, "--schema", "two")
        assert [d["key"] for d in report["destinations"]] == [key_of(UNREACHABLE, "two")]

    def test_corrupt_frame_is_reported(self, spill_dir: Path) -> None:
        """A flipped byte shows up as a corrupt frame, and only the sound batches count."""
        spill(spill_dir, UNREACHABLE, "one", [3, 4, 5])
        flip_middle_frame(spill_dir, key_of(UNREACHABLE, "one"))
        report = status(spill_dir)
        (dest,) = report["destinations"]
        assert (dest["pending_batches"], dest["pending_records"]) == (2, 8)
        assert dest["corrupt_skipped"] == 1
        done = run(spill_dir, "status")
        assert table_row(done.stdout, key_of(UNREACHABLE, "one"))[-1] == "1"


class TestReplay:
    async def test_every_row_written_once(
        self, spill_dir: Path, pg_schema: tuple[str, str]
    ) -> None:
        """Replay writes every spilled row once; a second run finds nothing and writes nothing."""
        dsn, schema = pg_schema
        spill(spill_dir, dsn, schema, [3, 4, 5])
        done = run(spill_dir, "replay", "--dsn", dsn, "--schema", schema)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "replayed 12 records in 3 batches (0 left)\n"
        assert await stored(dsn, schema) == (12, 12)
        again = run(spill_dir, "replay", "--dsn", dsn, "--schema", schema)
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith("nothing to replay for ")
        assert await stored(dsn, schema) == (12, 12)
        assert status(spill_dir)["destinations"] == []

    async def test_dsn_from_environment(self, spill_dir: Path, pg_schema: tuple[str, str]) -> None:
        """ATRACE_DSN and ATRACE_SCHEMA name the destination when the options are left out."""
        dsn, schema = pg_schema
        spill(spill_dir, dsn, schema, [2])
        done = run(spill_dir, "replay", env={"ATRACE_DSN": dsn, "ATRACE_SCHEMA": schema})
        assert done.returncode == 0, done.stderr
        assert await stored(dsn, schema) == (2, 2)

    async def test_batch_replayed_again_is_not_stored_twice(
        self, spill_dir: Path, pg_schema: tuple[str, str]
    ) -> None:
        """A batch already stored (its ack lost) replays as a no-op: the ledger keeps it once."""
        dsn, schema = pg_schema
        store = Spill(spill_dir / key_of(dsn, schema))
        batch_id, rows = uuid.uuid4(), make_rows(4, "once")
        for _ in range(2):
            assert store.append(batch_id, rows)
            store.close()
            done = run(spill_dir, "replay", "--dsn", dsn, "--schema", schema)
            assert done.returncode == 0, done.stderr
            assert done.stdout == "replayed 4 records in 1 batch (0 left)\n"
        assert await stored(dsn, schema) == (4, 4)

    def test_unreachable_database_keeps_the_data(self, spill_dir: Path) -> None:
        """An unreachable database is one line with exit 3, no traceback; nothing is lost."""
        spill(spill_dir, UNREACHABLE, "one", [3, 4])
        done = run(spill_dir, "replay", "--dsn", UNREACHABLE, "--schema", "one")
        assert done.returncode == 3
        assert done.stderr.startswith("atrace: cannot reach the database")
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert pending(spill_dir, UNREACHABLE, "one") == (2, 7)

    async def test_stops_at_the_first_batch_that_fails(
        self, spill_dir: Path, pg_schema: tuple[str, str]
    ) -> None:
        """A batch the database refuses stops the replay with exit 1; it and later ones stay."""
        dsn, schema = pg_schema
        store = Spill(spill_dir / key_of(dsn, schema))
        good = make_rows(3, "good")
        # attrs that are not JSON: the encoder never makes them, PostgreSQL refuses them
        bad = [(*row[:14], b"{not json", *row[15:]) for row in make_rows(2, "bad")]
        bad_id = uuid.uuid4()
        for batch_id, rows in ((uuid.uuid4(), good), (bad_id, bad), (uuid.uuid4(), good)):
            assert store.append(batch_id, rows)
        store.close()
        done = run(spill_dir, "replay", "--dsn", dsn, "--schema", schema)
        assert done.returncode == 1
        assert done.stdout == "replayed 3 records in 1 batch (5 left)\n"
        assert done.stderr.startswith(f"atrace: replay stopped: batch {bad_id}")
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert await stored(dsn, schema) == (3, 3)
        assert pending(spill_dir, dsn, schema) == (2, 5)

    async def test_corrupt_segment_does_not_stop_replay(
        self, spill_dir: Path, pg_schema: tuple[str, str]
    ) -> None:
        """The damaged frame is skipped and counted; the sound batches around it are written."""
        dsn, schema = pg_schema
        spill(spill_dir, dsn, schema, [3, 4, 5])
        flip_middle_frame(spill_dir, key_of(dsn, schema))
        done = run(spill_dir, "replay", "--dsn", dsn, "--schema", schema)
        assert done.returncode == 0, done.stderr
        assert done.stdout == (
            "replayed 8 records in 2 batches (0 left); skipped 1 damaged frame\n"
        )
        assert await stored(dsn, schema) == (8, 8)

    async def test_progress_bar_on_a_terminal(
        self, spill_dir: Path, pg_schema: tuple[str, str]
    ) -> None:
        """On a terminal a progress bar over records is drawn; the summary still goes to stdout."""
        dsn, schema = pg_schema
        spill(spill_dir, dsn, schema, [3, 4])
        code, stdout, shown = run_on_terminal(spill_dir, "replay", "--dsn", dsn, "--schema", schema)
        assert code == 0, shown
        assert stdout == "replayed 7 records in 2 batches (0 left)\n"
        assert "replaying" in shown and "records" in shown
        assert await stored(dsn, schema) == (7, 7)


class TestPurge:
    def test_yes_deletes_pending(self, spill_dir: Path) -> None:
        """purge --yes deletes every destination's pending batches and leaves rejected ones."""
        spill(spill_dir, UNREACHABLE, "one", [3, 4])
        spill(spill_dir, UNREACHABLE, "one", [2], permanent=True)
        spill(spill_dir, UNREACHABLE, "two", [5])
        done = run(spill_dir, "purge", "--yes")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "purged 12 pending records\n"
        total = status(spill_dir)["total"]
        assert (total["pending_records"], total["rejected_records"]) == (0, 2)

    def test_refuses_without_terminal_or_yes(self, spill_dir: Path) -> None:
        """Without a terminal to ask on and without --yes, purge refuses with exit 2."""
        spill(spill_dir, UNREACHABLE, "one", [3])
        done = run(spill_dir, "purge")
        assert done.returncode == 2
        assert done.stderr.startswith("atrace: ") and done.stderr.count("\n") == 1
        assert "--yes" in done.stderr
        assert pending(spill_dir, UNREACHABLE, "one") == (1, 3)

    def test_rejected_only(self, spill_dir: Path) -> None:
        """--rejected deletes the rejected batches and leaves the pending ones."""
        spill(spill_dir, UNREACHABLE, "one", [3])
        spill(spill_dir, UNREACHABLE, "one", [2, 2], permanent=True)
        done = run(spill_dir, "purge", "--rejected", "--yes")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "purged 4 rejected records\n"
        total = status(spill_dir)["total"]
        assert (total["pending_records"], total["rejected_records"]) == (3, 0)

    def test_dsn_and_schema_pick_one_destination(self, spill_dir: Path) -> None:
        """Given --dsn and --schema, purge deletes that destination's batches only."""
        spill(spill_dir, UNREACHABLE, "one", [3])
        spill(spill_dir, UNREACHABLE, "two", [5])
        done = run(spill_dir, "purge", "--yes", "--dsn", UNREACHABLE, "--schema", "two")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "purged 5 pending records\n"
        assert pending(spill_dir, UNREACHABLE, "one") == (1, 3)
        assert pending(spill_dir, UNREACHABLE, "two") == (0, 0)

    def test_asks_on_a_terminal(self, spill_dir: Path) -> None:
        """On a terminal purge asks first: "n" keeps the data (exit 1), "y" deletes it."""
        spill(spill_dir, UNREACHABLE, "one", [3])
        code, stdout, _ = run_on_terminal(spill_dir, "purge", typed=b"n\n")
        assert code == 1
        assert "delete 3 pending records" in stdout and "nothing purged" in stdout
        assert pending(spill_dir, UNREACHABLE, "one") == (1, 3)
        code, stdout, _ = run_on_terminal(spill_dir, "purge", typed=b"y\n")
        assert code == 0
        assert stdout.endswith("purged 3 pending records\n")
        assert pending(spill_dir, UNREACHABLE, "one") == (0, 0)
