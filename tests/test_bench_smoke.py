"""Smoke test of the benchmark harness: every benchmark runs on a tiny workload and gets a row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.report import BENCHMARKS
from tests.conftest import ROOT


def test_harness_writes_every_row(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--contacts", "200", "--runs", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads((tmp_path / "results.json").read_text())
    rows = {row["key"]: row for row in document["results"]}
    assert sorted(rows) == sorted(BENCHMARKS)
    assert all(row["error"] is None for row in rows.values())
    assert document["machine"]["cores"] >= 1
    markdown = (tmp_path / "results.md").read_text()
    for row in rows.values():
        assert f"| {row['title']} |" in markdown
