"""Checks of the throwaway PostgreSQL server that tests/postgres.py starts."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests.postgres import BINDIR_VARIABLE, PostgresServer, PostgresUnavailable, find_bindir


@pytest.mark.parametrize("run", ["first", "second"])
def test_database_fresh_per_test(postgres_url: str, run: str) -> None:
    # Whichever of the two runs comes second fails if the database is shared between tests.
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            assert not sa.inspect(conn).has_table("probe")
            conn.execute(sa.text("CREATE TABLE probe (run text PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO probe VALUES (:run)"), {"run": run})
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT run FROM probe")).scalars().all() == [run]
    finally:
        engine.dispose()


def test_url_shape(postgres_url: str, postgres_server: PostgresServer) -> None:
    url = sa.engine.make_url(postgres_url)
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "127.0.0.1"
    assert url.port == postgres_server.port
    assert url.username == postgres_server.user
    assert url.password is None


def test_server_settings(postgres_server: PostgresServer) -> None:
    [(version,)] = postgres_server.admin_sql("SHOW server_version_num")
    [(listen,)] = postgres_server.admin_sql("SHOW listen_addresses")
    [(fsync,)] = postgres_server.admin_sql("SHOW fsync")
    assert int(version) // 10000 == 15
    assert listen == "127.0.0.1"
    assert fsync == "off"


def test_server_not_running_as_root(postgres_server: PostgresServer) -> None:
    postmaster_pid = int((postgres_server.data_dir / "postmaster.pid").read_text().splitlines()[0])
    owner = os.stat(f"/proc/{postmaster_pid}").st_uid
    assert owner != 0
    if os.geteuid() == 0:
        assert postgres_server.user == "postgres"


def test_hba_trusts_only_local(postgres_server: PostgresServer) -> None:
    rules = postgres_server.admin_sql("SELECT type, address FROM pg_hba_file_rules ORDER BY line_number")
    assert rules == [("local", None), ("host", "127.0.0.1")]


def test_terminate_backends_by_application_name(postgres_url: str, postgres_server: PostgresServer) -> None:
    engine = sa.create_engine(postgres_url, connect_args={"application_name": "fixture-victim"})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            assert postgres_server.terminate_backends("fixture-victim") == 1
            with pytest.raises(sa.exc.OperationalError):
                conn.execute(sa.text("SELECT 1"))
        assert postgres_server.terminate_backends("fixture-victim") == 0
    finally:
        engine.dispose()


def test_drop_database_with_open_session(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("fixture_drop_check")
    leftover = psycopg.connect(postgres_server.url("fixture_drop_check").replace("+psycopg", ""))
    try:
        postgres_server.drop_database("fixture_drop_check")
        names = postgres_server.admin_sql("SELECT datname FROM pg_database WHERE datname = 'fixture_drop_check'")
        assert names == []
    finally:
        leftover.close()


def test_stop_removes_folder_and_frees_port() -> None:
    server = PostgresServer(find_bindir())
    server.start()
    folder, port = server.folder, server.port
    assert folder is not None
    assert server.admin_sql("SELECT 1") == [(1,)]

    server.stop()
    server.stop()  # a second stop must be harmless

    assert not folder.exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_missing_binaries_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BINDIR_VARIABLE, str(tmp_path))
    with pytest.raises(PostgresUnavailable, match="initdb and pg_ctl not found"):
        find_bindir()


def test_missing_binaries_names_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BINDIR_VARIABLE, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("tests.postgres.PG_MAJOR_VERSION", 99)
    with pytest.raises(PostgresUnavailable, match="apt-get install postgresql-99"):
        find_bindir()
