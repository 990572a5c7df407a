"""Run the benchmarks and write the results table: ``python -m bench [--quick] [--only NAME ...]``.

Every server runs on 127.0.0.1 and is stopped before the command exits. Results go to
``bench/results/results.md`` and ``results.json`` unless ``--out`` names another folder.
The exit code is 0 when every benchmark ran, whether or not it met its target, and 1
when one could not run, whose row then gives the error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import backfill, daemon, mapping, push
from bench.report import BENCHMARKS, Result, write
from bench.workloads import FULL, QUICK, Profile, tiny, with_runs

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Each group starts its own emulators and returns the rows it measures.
GROUPS: dict[str, tuple[Callable[[Profile, Path], list[Result]], tuple[str, ...]]] = {
    "push": (push.run, ("push_throughput", "baseline")),
    "mapping": (mapping.run, ("mapping",)),
    "backfill": (backfill.run, ("memory", "unchanged_resync")),
    "idle": (daemon.idle, ("idle_cycle",)),
    "latency": (daemon.change_latency, ("change_latency",)),
}
TITLES = {
    "push_throughput": "Push throughput",
    "baseline": "Baseline (sequential script)",
    "mapping": "Mapping cost",
    "memory": "Memory",
    "unchanged_resync": "Unchanged re-sync",
    "idle_cycle": "Idle cycle",
    "change_latency": "Change latency",
}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads and 2 runs, in a few minutes")
    parser.add_argument(
        "--contacts", type=int, metavar="N",
        help="size every workload at about N contacts (memory compares N with 10 N), to check the harness itself",
    )
    parser.add_argument("--runs", type=int, metavar="N", help="runs per figure (default: 3, or 2 with --quick)")
    parser.add_argument("--only", action="append", choices=sorted(GROUPS), help="run only this group; repeat for several")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"folder for results.md and results.json (default: {RESULTS_DIR})")
    arguments = parser.parse_args(argv)
    if arguments.runs is not None and arguments.runs < 1:
        parser.error("--runs must be at least 1")
    if arguments.contacts is not None and arguments.contacts < 10:
        parser.error("--contacts must be at least 10")
    return arguments


def _profile(arguments: argparse.Namespace) -> Profile:
    if arguments.contacts is not None:
        return tiny(arguments.contacts, arguments.runs or 2)
    return with_runs(QUICK if arguments.quick else FULL, arguments.runs)


def _exit_on_sigterm(signal_number: int, _frame: object) -> None:
    # SystemExit unwinds the stack, so every emulator and connector process is stopped on the way out.
    raise SystemExit(128 + signal_number)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    arguments = _arguments(argv)
    profile = _profile(arguments)
    started = dt.datetime.now(dt.timezone.utc)
    command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    chosen = arguments.only or list(GROUPS)
    results: list[Result] = []
    failed = False
    workdir = Path(tempfile.mkdtemp(prefix="sfcharles-bench-"))
    try:
        for name in chosen:
            run, keys = GROUPS[name]
            group_dir = workdir / name
            group_dir.mkdir()
            print(f"[bench] {name}: running ({profile.name} profile, {profile.runs} runs)", flush=True)
            group_started = time.monotonic()
            try:
                rows = run(profile, group_dir)
            except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
                failed = True
                traceback.print_exc()
                error = f"{exc.__class__.__name__}: {exc}"
                rows = [Result(key, TITLES[key], "-", "-", "-", None, "-", [], error=error) for key in keys]
            for row in rows:
                print(f"[bench]   {row.title}: {row.figure if row.error is None else row.error}", flush=True)
            print(f"[bench] {name}: {time.monotonic() - group_started:.0f} s", flush=True)
            results += rows
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results.sort(key=lambda row: BENCHMARKS.index(row.key))
    json_path, markdown_path = write(results, arguments.out, profile=profile.name, runs=profile.runs, started=started, command=command)
    print(markdown_path.read_text())
    print(f"[bench] wrote {markdown_path} and {json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
