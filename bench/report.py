"""Benchmark results: one row per benchmark, written as a Markdown table and as JSON."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Every benchmark in the order of the report; the smoke test checks that each has a row.
BENCHMARKS = (
    "push_throughput",
    "baseline",
    "mapping",
    "memory",
    "idle_cycle",
    "change_latency",
    "unchanged_resync",
)


@dataclass
class Result:
    """One row of the results table.

    ``met`` is None for a row without a target (the baseline) and for a benchmark that
    could not run, whose ``error`` gives the reason. ``values`` contains the raw measurements.
    """

    key: str
    title: str
    workload: str
    figure: str
    target: str
    met: bool | None
    emulator: str
    commands: list[str]
    values: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, Any]:
    """Describe the machine: cores, memory, Python version and platform."""
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    return {
        "code": _code_version(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _code_version() -> str:
    """Return the commit of the code measured, marked when the work tree has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if not commit:
        return "unknown (not a git checkout)"
    return f"{commit} with uncommitted changes" if dirty else commit


def write(results: list[Result], out_dir: Path, *, profile: str, runs: int, started: dt.datetime, command: str) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    finished = dt.datetime.now(dt.timezone.utc)
    header = {
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "command": command,
        "profile": profile,
        "runs": runs,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round((finished - started).total_seconds(), 1),
        "machine": machine(),
    }
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps({**header, "results": [asdict(result) for result in results]}, indent=2) + "\n")
    markdown_path = out_dir / "results.md"
    markdown_path.write_text(_markdown(results, header))
    return json_path, markdown_path


def _markdown(results: list[Result], header: dict[str, Any]) -> str:
    machine_info = header["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"`{header['command']}`, profile `{header['profile']}`, {header['runs']} runs per figure unless the row says otherwise, "
        f"started {header['started']}, took {header['duration_s']:.0f} s, code {machine_info['code']}.",
        f"Machine: {machine_info['cores']} cores, {machine_info['memory_gib']} GiB, Python {machine_info['python']}, "
        f"{machine_info['platform']}; 1-minute load average at the end: {header['load_average_1m_at_end']}.",
        "",
        "| Benchmark | Workload | Result | Target | Met | Emulator alone |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        met = {True: "yes", False: "**no**", None: "-"}[result.met]
        figure = result.figure if result.error is None else f"did not run: {result.error}"
        lines.append(f"| {result.title} | {result.workload} | {figure} | {result.target} | {met} | {result.emulator} |")
    lines += ["", "## Commands", ""]
    for result in results:
        lines.append(f"**{result.title}**")
        lines.append("")
        lines += [f"    {command}" for command in result.commands]
        lines.append("")
    return "\n".join(lines)
