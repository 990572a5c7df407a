"""Processes of a benchmark: the two emulators and the connector, each in its own process.

Everything listens on and connects to 127.0.0.1 only. Each process is stopped by its
own id, with SIGTERM first and SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLIENT_ID = "bench-client-id"
CLIENT_SECRET = "bench-client-secret"
CHARLES_KEY = "bench-charles-key"
# High enough that no benchmark run touches the org's daily API limit.
DAILY_API_LIMIT = 100_000_000
STOP_GRACE_S = 10.0
PEAK_MEMORY_INTERVAL_S = 0.05
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A benchmark could not run: a process failed to start, exited with an error or timed out."""


def sfcharles_command() -> list[str]:
    """Return the command of the connector's CLI: the installed ``sfcharles`` script next to this Python."""
    script = Path(sys.executable).parent / "sfcharles"
    return [str(script)] if script.exists() else [sys.executable, "-m", "connector"]


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_GRACE_S)


def _start_ready(command: list[str], name: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start a process that prints one JSON ready line on stdout, and return it with that line."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise BenchError(f"{name} exited before it was ready (exit code {process.wait()}); command: {' '.join(command)}")
    return process, json.loads(line)


@dataclass
class Salesforce:
    """A running Salesforce emulator process and an admin client for it."""

    process: subprocess.Popen[str]
    url: str
    ca_file: str
    command: list[str]

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=self.ca_file), timeout=60)

    def api_calls(self) -> int:
        with self.admin() as client:
            return int(client.get("/_emulator/stats").raise_for_status().json()["api_calls"])


@dataclass
class Charles:
    """A running Charles emulator process and an admin client for it."""

    process: subprocess.Popen[str]
    url: str
    command: list[str]

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def counts(self) -> dict[str, Any]:
        with self.admin() as client:
            return client.get("/_emulator/requests").raise_for_status().json()

    def reset(self, latency_s: float) -> None:
        with self.admin() as client:
            client.post("/_emulator/reset").raise_for_status()
            client.post("/_emulator/latency", json={"seconds": latency_s}).raise_for_status()


def display(command: list[str], replacements: dict[str, str] | None = None) -> str:
    """Return a command as a reader can type it.

    The program is named instead of this Python's path, and each key of ``replacements``
    (a URL with its random port, a temporary folder) is replaced by its placeholder.
    """
    words = ["python" if part == sys.executable else part for part in command]
    if words and words[0].endswith("/sfcharles"):
        words[0] = "sfcharles"
    text = shlex.join(words)
    for value, placeholder in (replacements or {}).items():
        text = text.replace(value, placeholder)
    return text


@contextmanager
def salesforce(workdir: Path, *, generated_contacts: int = 0, seeded: bool = False) -> Iterator[Salesforce]:
    """Run the Salesforce emulator: empty, or with the bundled samples, plus generated Contacts."""
    command = [
        sys.executable, "-m", "connector.emulators.salesforce", "--host", HOST, "--port", "0",
        "--ca-file", str(workdir / "salesforce-ca.pem"), "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET,
        "--daily-api-limit", str(DAILY_API_LIMIT), "--log-level", "WARNING",
    ]
    if not seeded:
        command.append("--empty")
    if generated_contacts:
        command += ["--generated-contacts", str(generated_contacts)]
    process, ready = _start_ready(command, "the Salesforce emulator")
    try:
        yield Salesforce(process, ready["url"], ready["ca_file"], command)
    finally:
        _stop(process)


@contextmanager
def charles(*, latency_ms: float = 0.0, store: bool = True) -> Iterator[Charles]:
    command = [
        sys.executable, "-m", "connector.emulators.charles", "--host", HOST, "--port", "0",
        "--api-key", CHARLES_KEY, "--latency-ms", f"{latency_ms:g}", "--log-level", "WARNING",
    ]
    if not store:
        command.append("--no-store")
    process, ready = _start_ready(command, "the Charles emulator")
    try:
        yield Charles(process, ready["url"], command)
    finally:
        _stop(process)


def connector_env(sf: Salesforce, ch: Charles, state_db: Path, **settings: str) -> dict[str, str]:
    """Return the environment of a connector process: this one's, minus SFCHARLES_*, plus the emulators."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SFCHARLES_")}
    env.update(
        SFCHARLES_SALESFORCE_LOGIN_URL=sf.url,
        SFCHARLES_SALESFORCE_CLIENT_ID=CLIENT_ID,
        SFCHARLES_SALESFORCE_CLIENT_SECRET=CLIENT_SECRET,
        SFCHARLES_SALESFORCE_CA_FILE=sf.ca_file,
        SFCHARLES_CHARLES_BASE_URL=ch.url,
        SFCHARLES_CHARLES_API_KEY=CHARLES_KEY,
        SFCHARLES_DEFAULT_REGION="US",
        SFCHARLES_STATE_URL=f"sqlite:///{state_db}",
        SFCHARLES_LOG_LEVEL="INFO",
    )
    env.update({f"SFCHARLES_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass
class ConnectorRun:
    """One finished connector process: exit code, JSON log lines, time and resources."""

    exit_code: int
    lines: list[dict[str, Any]]
    stderr: str
    wall_s: float
    peak_rss_mb: float
    cpu_s: float

    def summary(self) -> dict[str, Any]:
        """Return the cycle summary (``sync.cycle_completed``) of a one-cycle command."""
        summaries = [line for line in self.lines if line.get("event") == "sync.cycle_completed"]
        if len(summaries) != 1:
            raise BenchError(
                f"expected one sync.cycle_completed line, found {len(summaries)}; exit code {self.exit_code}; "
                f"stderr: {self.stderr[-2000:]}"
            )
        return summaries[0]


class _PeakMemory:
    """Samples a process's peak resident set size since its exec: the VmHWM line of /proc/<pid>/status.

    ``wait4``'s ``ru_maxrss`` is no use here, because Linux carries the resident size that the
    forked child had before exec, the harness's own, into it. VmHWM belongs to the new
    program's memory alone. Growth in the last sampling interval before exit is missed.
    """

    def __init__(self, pid: int) -> None:
        self._path = Path(f"/proc/{pid}/status")
        self.peak_kib = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while True:
            try:
                for line in self._path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            except (OSError, ValueError):
                pass  # the process has exited, or /proc showed a half-written line
            if self._done.wait(PEAK_MEMORY_INTERVAL_S):
                return

    def stop(self) -> float:
        """Stop sampling and return the peak in MiB."""
        self._done.set()
        self._thread.join()
        return self.peak_kib / 1024


def run_connector(args: list[str], env: dict[str, str], *, timeout_s: float) -> ConnectorRun:
    """Run the ``sfcharles`` CLI to completion; measure wall time, CPU time and peak resident memory.

    CPU time comes from ``wait4`` for this one process and peak memory from sampling its
    VmHWM, so the emulators and earlier runs do not count.
    """
    command = [*sfcharles_command(), *args]
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    memory = _PeakMemory(process.pid)
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    try:
        stdout, stderr = _read_both(process)
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
        peak_mb = memory.stop()
    wall_s = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    if process.returncode < 0:
        raise BenchError(f"{display(command)} was killed (signal {-process.returncode}) after {wall_s:.0f} s; limit {timeout_s:.0f} s")
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return ConnectorRun(
        exit_code=process.returncode,
        lines=lines,
        stderr=stderr,
        wall_s=wall_s,
        peak_rss_mb=peak_mb,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


def _read_both(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Read stdout and stderr to their end without waiting for the process, which wait4 reaps."""
    assert process.stdout is not None and process.stderr is not None
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(process.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    stdout = process.stdout.read()
    reader.join()
    return stdout, "".join(chunks)


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of a running process, from /proc (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass
class Daemon:
    """A running ``sfcharles run`` process whose JSON log lines are read as they arrive."""

    process: subprocess.Popen[str]
    command: list[str]
    lines: list[dict[str, Any]] = field(default_factory=list)
    _new_line: threading.Condition = field(default_factory=threading.Condition)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            if raw.startswith("{"):
                with self._new_line:
                    self.lines.append(json.loads(raw))
                    self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for_cycles(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        """Block until ``count`` cycle summaries have been logged; return them all."""
        deadline = time.monotonic() + timeout_s
        with self._new_line:
            while True:
                summaries = [line for line in self.lines if line.get("event") == "sync.cycle_completed"]
                if len(summaries) >= count:
                    return summaries
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    raise BenchError(
                        f"the daemon logged {len(summaries)} of {count} cycles in {timeout_s:.0f} s "
                        f"(exit code {self.process.poll()})"
                    )
                self._new_line.wait(remaining)


@contextmanager
def daemon(env: dict[str, str]) -> Iterator[Daemon]:
    """Run ``sfcharles run`` until the block ends, then stop it with SIGTERM."""
    command = [*sfcharles_command(), "run"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    running = Daemon(process, command)
    reader = threading.Thread(target=running._read, daemon=True)
    reader.start()
    try:
        yield running
    finally:
        _stop(process)
        reader.join(timeout=STOP_GRACE_S)


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def run_json(module: str, args: list[str], *, timeout_s: float) -> tuple[dict[str, Any], list[str]]:
    """Run ``python -m module args`` and return the JSON object it prints, with the command it ran."""
    command = [sys.executable, "-m", module, *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{display(command)} did not finish within {timeout_s:.0f} s") from None
    if result.returncode != 0:
        raise BenchError(f"{display(command)} exited with code {result.returncode}: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]), command


def placeholders(sf: Salesforce | None = None, ch: Charles | None = None) -> dict[str, str]:
    """Return the replacements that turn this run's URLs and files into placeholders in shown commands."""
    names: dict[str, str] = {}
    if sf is not None:
        names[sf.ca_file] = "$SALESFORCE_CA_FILE"
        names[sf.url] = "$SALESFORCE_URL"
    if ch is not None:
        names[ch.url] = "$CHARLES_URL"
    return names
