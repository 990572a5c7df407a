"""A throwaway PostgreSQL server for the tests, started once per test session.

The server is started the first time a test requests ``postgres_url`` or
``postgres_server``, so test runs that need no PostgreSQL do not pay for it. It runs
from ``initdb`` and ``pg_ctl`` in a new temporary folder, listens on 127.0.0.1 only,
on a free port, and accepts any local user without a password (``trust``). Durability
is switched off, because the data is deleted at the end of the session.

When the tests run as root, the server runs as the ``postgres`` OS user, because
PostgreSQL refuses to run as root.

Set ``SFCHARLES_TEST_PG_BINDIR`` to the folder holding ``initdb`` and ``pg_ctl`` to use
a server other than PostgreSQL 15.
"""

from __future__ import annotations

import getpass
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

PG_MAJOR_VERSION = 15
BINDIR_VARIABLE = "SFCHARLES_TEST_PG_BINDIR"
SERVER_OS_USER_WHEN_ROOT = "postgres"
START_TIMEOUT_S = 30
START_ATTEMPTS = 3  # a free port can be taken by another process before the server binds it
# Unix socket paths are limited to 107 bytes on Linux, and the file name adds ".s.PGSQL.<port>".
MAX_SOCKET_DIR_LENGTH = 80


def _install_hint() -> str:
    return (
        f"Install PostgreSQL {PG_MAJOR_VERSION} (on Debian or Ubuntu: apt-get install postgresql-{PG_MAJOR_VERSION}), "
        f"or set {BINDIR_VARIABLE} to the folder that contains initdb and pg_ctl"
    )


class PostgresUnavailable(Exception):
    """The PostgreSQL binaries are missing, or the server failed to start."""


def find_bindir() -> Path:
    """Find the folder containing PostgreSQL's ``initdb`` and ``pg_ctl``. Raise PostgresUnavailable if none is found."""
    override = os.environ.get(BINDIR_VARIABLE)
    if override:
        bindir = Path(override)
        missing = [name for name in ("initdb", "pg_ctl") if not (bindir / name).is_file()]
        if missing:
            raise PostgresUnavailable(f"{BINDIR_VARIABLE}={override}: {' and '.join(missing)} not found in that folder. {_install_hint()}")
        return bindir

    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        # /usr/local/bin/initdb is often a symlink, and pg_ctl must come from the same install.
        candidates.append(Path(on_path).resolve().parent)
    candidates.append(Path(f"/usr/lib/postgresql/{PG_MAJOR_VERSION}/bin"))

    for bindir in candidates:
        if not ((bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file()):
            continue
        version = _major_version(bindir / "initdb")
        if version == PG_MAJOR_VERSION:
            return bindir

    searched = ", ".join(str(path) for path in candidates)
    raise PostgresUnavailable(
        f"PostgreSQL {PG_MAJOR_VERSION} initdb and pg_ctl not found (searched PATH and {searched}). {_install_hint()}"
    )


def _major_version(initdb: Path) -> int | None:
    output = subprocess.run([str(initdb), "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"\)\s+(\d+)", output)
    return int(match.group(1)) if match else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _searchable_by_others(folder: Path) -> bool:
    return all(path.stat().st_mode & stat.S_IXOTH for path in (folder, *folder.parents))


def _make_folder(*, for_other_user: bool) -> Path:
    """Create the server's folder in the temporary directory, or in /tmp when that is unusable.

    The temporary directory is unusable when its path is too long for a unix socket, or when
    the server runs as another OS user who cannot reach it, such as TMPDIR=/root/tmp for the
    postgres user.
    """
    parent = Path(tempfile.gettempdir())
    if for_other_user and not _searchable_by_others(parent):
        parent = Path("/tmp")
    folder = Path(tempfile.mkdtemp(prefix="sfcharles-pg-", dir=parent))
    if len(str(folder)) > MAX_SOCKET_DIR_LENGTH:
        folder.rmdir()
        folder = Path(tempfile.mkdtemp(prefix="sfcharles-pg-", dir="/tmp"))
    return folder


class PostgresServer:
    """One PostgreSQL server in a temporary folder, reachable at 127.0.0.1:``port`` as ``user``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.host = "127.0.0.1"
        self.port = 0
        self.folder: Path | None = None
        self.started = False
        self.startup_s = 0.0  # seconds that start() took, initdb included
        self._command_prefix: list[str] = []
        self._os_uid: int | None = None
        self._os_gid: int | None = None
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SERVER_OS_USER_WHEN_ROOT)
            except KeyError:
                raise PostgresUnavailable(
                    f"tests run as root, but OS user {SERVER_OS_USER_WHEN_ROOT!r} was not found, and PostgreSQL "
                    f"does not run as root. {_install_hint()}. The Debian package creates that user."
                ) from None
            self.user = SERVER_OS_USER_WHEN_ROOT
            self._os_uid, self._os_gid = account.pw_uid, account.pw_gid
            runuser = shutil.which("runuser")
            if runuser is None:
                raise PostgresUnavailable(
                    f"tests run as root, so the server must run as {SERVER_OS_USER_WHEN_ROOT!r}, but runuser "
                    "was not found. Install util-linux, or run the tests as a non-root user."
                )
            self._command_prefix = [runuser, "-u", SERVER_OS_USER_WHEN_ROOT, "--"]
        else:
            self.user = getpass.getuser()

    @property
    def data_dir(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    @property
    def log_file(self) -> Path:
        assert self.folder is not None
        return self.folder / "server.log"

    def url(self, database: str) -> str:
        """Return the SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def start(self) -> None:
        """Create a cluster in a new temporary folder and start the server on a free port."""
        began = time.monotonic()
        self.folder = _make_folder(for_other_user=self._os_uid is not None)
        try:
            if self._os_uid is not None:
                os.chown(self.folder, self._os_uid, self._os_gid or -1)
            self._initdb()
            self._write_hba()
            self._start_on_free_port()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began

    def _run(self, args: list[str], step: str) -> None:
        result = subprocess.run(
            [*self._command_prefix, *args], capture_output=True, text=True, check=False, timeout=START_TIMEOUT_S * 2
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{step} failed with exit code {result.returncode}:\n{result.stdout}{result.stderr}{self._log_tail()}"
            )

    def _initdb(self) -> None:
        self._run(
            [
                str(self.bindir / "initdb"),
                "--pgdata", str(self.data_dir),
                "--username", self.user,
                "--auth", "trust",
                "--encoding", "UTF8",
                "--locale", "C",
                "--no-sync",
            ],
            "initdb",
        )

    def _write_hba(self) -> None:
        # Replaces initdb's file, which also trusts ::1 and replication connections.
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
            "local   all       all                 trust\n"
            "host    all       all   127.0.0.1/32  trust\n"
        )
        if self._os_uid is not None:
            os.chown(hba, self._os_uid, self._os_gid or -1)

    def _start_on_free_port(self) -> None:
        last_error: PostgresUnavailable | None = None
        for _ in range(START_ATTEMPTS):
            self.port = _free_port()
            options = " ".join(
                [
                    f"-p {self.port}",
                    f"-c listen_addresses={self.host}",
                    f"-c unix_socket_directories={shlex.quote(str(self.folder))}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                ]
            )
            try:
                self._run(
                    [
                        str(self.bindir / "pg_ctl"),
                        "start",
                        "--pgdata", str(self.data_dir),
                        "--log", str(self.log_file),
                        "--wait",
                        "--timeout", str(START_TIMEOUT_S),
                        "-o", options,
                    ],
                    f"pg_ctl start on port {self.port}",
                )
            except PostgresUnavailable as exc:
                last_error = exc
                continue
            self.started = True
            return
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """Stop the server if it runs and delete its folder. A second call does nothing."""
        if self.started:
            self.started = False
            try:
                subprocess.run(
                    [*self._command_prefix, str(self.bindir / "pg_ctl"), "stop", "--pgdata", str(self.data_dir), "-m", "immediate", "--wait"],
                    capture_output=True,
                    check=False,
                    timeout=START_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                self._kill_postmaster()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _kill_postmaster(self) -> None:
        """Send SIGKILL to the server's main process, whose pid is the first line of postmaster.pid."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass  # the server has exited already, or never wrote its pid file

    def _log_tail(self) -> str:
        if self.folder is None or not self.log_file.is_file():
            return ""
        lines = self.log_file.read_text(errors="replace").splitlines()[-20:]
        return "server log (last lines):\n" + "\n".join(lines) + "\n"

    def connect(self, database: str = "postgres") -> psycopg.Connection[Any]:
        """Open an autocommit connection to ``database`` as the superuser."""
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=database,
            autocommit=True, application_name="sfcharles-tests-admin",
        )

    def admin_sql(self, query: str | sql.Composable, params: Any = None, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser outside a transaction, and return its rows (none for DDL)."""
        with self.connect(database) as conn:
            cursor = conn.execute(query, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def terminate_backends(self, application_name: str) -> int:
        """Terminate every session whose application_name is ``application_name``, and return their number."""
        rows = self.admin_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        )
        return sum(1 for (terminated,) in rows if terminated)

    def create_database(self, name: str) -> None:
        self.admin_sql(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        # WITH (FORCE) terminates sessions a test left open, such as a pooled engine it did not dispose.
        self.admin_sql(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _database_name(test_name: str) -> str:
    """Return a unique database name that contains the test's name, for reading server logs."""
    readable = re.sub(r"[^a-z0-9_]+", "_", test_name.lower()).strip("_")[:40]
    return f"t_{readable}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole test session. Tests that request it fail, not skip, without PostgreSQL."""
    problem = None
    try:
        server = PostgresServer(find_bindir())
        server.start()
    except PostgresUnavailable as exc:
        problem = str(exc)
    if problem is not None:
        # Fail outside the except block, so the report shows the message without a chained traceback.
        pytest.fail(f"cannot start the test PostgreSQL server: {problem}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database that is dropped after the test."""
    name = _database_name(request.node.name)
    postgres_server.create_database(name)
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)
