"""The embedded default database: where it lives, and that it starts, is reused and keeps data."""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Iterator

import asyncpg
import platformdirs
import pytest

from atrace._postgres import embedded as _embedded
from atrace.errors import ConfigError, MissingExtraError

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX user ids")


@pytest.fixture
def data_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    """A fresh data dir the server's account can enter, set as ATRACE_DATA_DIR."""
    # Not pytest's tmp_path: as root, PostgreSQL runs as another account that cannot enter it.
    path = pathlib.Path(tempfile.mkdtemp(prefix="atrace-embedded-", dir="/tmp"))
    path.chmod(0o755)
    monkeypatch.setenv("ATRACE_DATA_DIR", str(path))
    try:
        yield path
    finally:
        _embedded.release_embedded(path)
        shutil.rmtree(path, ignore_errors=True)


async def fetchval(dsn: str, query: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


class TestDataDir:
    def test_env_var_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """ATRACE_DATA_DIR, when set, is the data dir."""
        monkeypatch.setenv("ATRACE_DATA_DIR", "/srv/atrace-data")
        assert _embedded.data_dir() == pathlib.Path("/srv/atrace-data")

    def test_env_var_expands_home(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A leading ~ in ATRACE_DATA_DIR means the user's home."""
        monkeypatch.setenv("ATRACE_DATA_DIR", "~/atrace-data")
        assert _embedded.data_dir() == pathlib.Path.home() / "atrace-data"

    @posix_only
    def test_root_uses_var_lib(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """As root with ATRACE_DATA_DIR unset, the data dir is /var/lib/atrace, not under /root."""
        monkeypatch.delenv("ATRACE_DATA_DIR", raising=False)
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        assert _embedded.data_dir() == pathlib.Path("/var/lib/atrace")

    @posix_only
    def test_empty_env_var_means_unset(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An empty ATRACE_DATA_DIR is the same as an unset one."""
        monkeypatch.setenv("ATRACE_DATA_DIR", "")
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        assert _embedded.data_dir() == pathlib.Path("/var/lib/atrace")

    @posix_only
    def test_user_gets_platform_data_dir(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A non-root user with ATRACE_DATA_DIR unset gets the platform's user data dir."""
        monkeypatch.delenv("ATRACE_DATA_DIR", raising=False)
        monkeypatch.setenv("XDG_DATA_HOME", "/srv/xdg-data")
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        expected = platformdirs.user_data_path("atrace")
        assert _embedded.data_dir() == expected
        if sys.platform.startswith("linux"):
            assert expected == pathlib.Path("/srv/xdg-data/atrace")

    @posix_only
    def test_default_with_spaces_moves_to_home(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A platform default the embedded server cannot use gives way to ~/.atrace."""
        monkeypatch.delenv("ATRACE_DATA_DIR", raising=False)
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        monkeypatch.setattr(
            platformdirs, "user_data_path", lambda app: pathlib.Path("/Users/u/Application Support")
        )
        assert _embedded.data_dir() == pathlib.Path.home() / ".atrace"


class TestEmbeddedDsn:
    async def test_dsn_runs_queries(self, data_home: pathlib.Path) -> None:
        """The DSN reaches a server whose data lives under <data dir>/pg."""
        dsn = _embedded.embedded_dsn()
        assert await fetchval(dsn, "select 1") == 1
        data_directory = await fetchval(dsn, "show data_directory")
        assert pathlib.Path(str(data_directory)) == (data_home / "pg").resolve()

    async def test_second_call_reuses_server(self, data_home: pathlib.Path) -> None:
        """A second call in the same process returns a working DSN for the same server."""
        first = _embedded.embedded_dsn()
        started = await fetchval(first, "select pg_postmaster_start_time()")
        second = _embedded.embedded_dsn(data_home)
        assert second == first
        assert await fetchval(second, "select pg_postmaster_start_time()") == started

    async def test_data_persists_across_restart(self, data_home: pathlib.Path) -> None:
        """Rows written before the server stops are there after it starts again."""
        dsn = _embedded.embedded_dsn()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("create table kept (n int); insert into kept values (42)")
        finally:
            await conn.close()
        started = await fetchval(dsn, "select pg_postmaster_start_time()")
        _embedded.release_embedded()
        dsn = _embedded.embedded_dsn()
        assert await fetchval(dsn, "select pg_postmaster_start_time()") != started
        assert await fetchval(dsn, "select n from kept") == 42

    async def test_creates_missing_parents(self, data_home: pathlib.Path) -> None:
        """A data dir whose parents do not exist yet is created."""
        nested = data_home / "a" / "b"
        try:
            assert await fetchval(_embedded.embedded_dsn(nested), "select 1") == 1
            assert (nested / "pg" / "PG_VERSION").is_file()
        finally:
            _embedded.release_embedded(nested)

    async def test_dsn_ignores_pgport(
        self, data_home: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A PGPORT in the environment does not send the client to the wrong socket."""
        dsn = _embedded.embedded_dsn()
        monkeypatch.setenv("PGPORT", "1")
        assert await fetchval(dsn, "select 1") == 1

    @posix_only
    def test_unsafe_path_is_a_config_error(self, data_home: pathlib.Path) -> None:
        """A data dir with a space is refused with a message naming the setting."""
        with pytest.raises(ConfigError, match="ATRACE_DATA_DIR"):
            _embedded.embedded_dsn(data_home / "with space")
        assert not (data_home / "with space").exists()

    def test_missing_pgserver_names_the_extra(
        self, data_home: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without pgserver installed the error says which extra to install."""
        monkeypatch.setitem(sys.modules, "pgserver", None)
        with pytest.raises(MissingExtraError, match=r"atrace\[embedded\]") as caught:
            _embedded.embedded_dsn()
        assert caught.value.module == "pgserver"
        assert caught.value.extra == "embedded"
        assert isinstance(caught.value, ImportError)
