"""The CLI as operators run it: real subprocesses against the emulators."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import CHARLES_KEY, CLIENT_SECRET, ROOT, json_lines, run_cli


def test_invalid_setting_exits_2_naming_it(env) -> None:
    result = run_cli(["sync"], {**env, "SFCHARLES_CHARLES_MAX_IN_FLIGHT": "lots"})

    assert result.returncode == 2
    assert "SFCHARLES_CHARLES_MAX_IN_FLIGHT" in result.stderr
    assert CHARLES_KEY not in result.stderr + result.stdout


def test_missing_base_url_exits_2(env) -> None:
    settings = {key: value for key, value in env.items() if key != "SFCHARLES_CHARLES_BASE_URL"}

    result = run_cli(["sync"], settings)

    assert result.returncode == 2
    assert "SFCHARLES_CHARLES_BASE_URL: missing" in result.stderr


def test_sync_prints_json_summary(env, charles) -> None:
    result = run_cli(["sync"], env)

    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    assert len(lines) == len(result.stdout.splitlines()), "stdout holds only JSON lines"
    [summary] = [line for line in lines if line["event"] == "sync.cycle_completed"]
    assert summary["fetched"] == 162
    assert summary["pushed"] == len(charles.upserts) > 0
    assert CHARLES_KEY not in result.stdout
    assert CLIENT_SECRET not in result.stdout


def test_state_show_after_sync(env) -> None:
    assert run_cli(["sync"], env).returncode == 0

    result = run_cli(["state", "show", "--json"], env)

    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["pipeline"] == "contacts"
    assert info["watermark"]["record_id"].startswith("003")
    assert info["lag_s"] is not None
    assert info["recent_cycles"][0]["status"] == "succeeded"


def test_state_rewind_then_resync(env, charles) -> None:
    assert run_cli(["sync"], env).returncode == 0
    sent = len(charles.upserts)

    assert run_cli(["state", "rewind", "--to", "2000-01-01T00:00:00Z"], env).returncode == 0
    resync = run_cli(["sync"], env)
    forced = run_cli(["backfill", "--force"], env)

    assert resync.returncode == 0
    [summary] = [line for line in json_lines(resync.stdout) if line["event"] == "sync.cycle_completed"]
    assert summary["fetched"] == 162
    assert summary["pushed"] == 0, "unchanged records are not sent again"
    assert forced.returncode == 0
    assert len(charles.upserts) == 2 * sent


def test_check_reports_field_map_ok(env) -> None:
    result = run_cli(["check"], env)

    assert result.returncode == 0, result.stderr
    [line] = [line for line in json_lines(result.stdout) if line["event"] == "check.completed"]
    assert line["field_map"] == "ok"
    assert "MobilePhone" in line["salesforce_fields_read"]


def test_check_rejects_map_with_unknown_field(env, tmp_path) -> None:
    broken = tmp_path / "contact.yaml"
    broken.write_text((ROOT / "field_maps" / "contact.yaml").read_text().replace("{from: LeadSource}", "{from: LeadSorce}"))

    result = run_cli(["check"], {**env, "SFCHARLES_FIELD_MAP": str(broken)})

    assert result.returncode == 2
    assert "'LeadSorce' does not exist on Contact" in result.stdout


def test_backfill_rejects_reversed_window(env) -> None:
    result = run_cli(["backfill", "--since", "2025-02-01T00:00:00Z", "--until", "2025-01-01T00:00:00Z"], env)

    assert result.returncode == 2
    assert "--since" in result.stderr


def test_daemon_stops_cleanly_on_sigterm(env) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "run"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SFCHARLES_")}, **env, "SFCHARLES_POLL_INTERVAL_S": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    seen: list[dict] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(json.loads(line))
        if sum(1 for entry in seen if entry["event"] == "sync.cycle_completed") >= 2:
            break
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    seen += json_lines(out)

    assert process.returncode == 0, err
    events = [entry["event"] for entry in seen]
    assert events.count("sync.cycle_completed") >= 2, "the first cycle runs at start, the next one interval later"
    assert "daemon.stop_requested" in events
    assert events[-1] == "daemon.stopped"


def test_status_json_after_cycle(env, charles) -> None:
    charles.reject("+17074908673", status=422, message="Invalid")  # a sample contact's valid mobile
    assert run_cli(["sync"], env).returncode == 3

    result = run_cli(["status", "--json"], env)

    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["watermark"] is not None
    assert info["watermark_lag_s"] is not None and info["watermark_lag_s"] >= 0
    assert info["last_success_at"] is not None
    used, limit = info["salesforce_api"]["used"], info["salesforce_api"]["limit"]
    assert 0 < used < limit
    [cycle] = info["recent_cycles"]
    assert cycle["fetched"] == 162
    assert cycle["pushed"] == len(charles.upserts)
    assert cycle["set_aside"] == 1
    assert info["dead_letters"] == 1


def test_status_table_readable(env) -> None:
    assert run_cli(["sync"], env).returncode == 0

    result = run_cli(["status"], env)

    assert result.returncode == 0, result.stderr
    assert "watermark lag:" in result.stdout
    assert "dead letters:      0" in result.stdout


def test_status_shows_running_cycle(env) -> None:
    from connector.state import StateStore

    assert run_cli(["sync"], env).returncode == 0
    store = StateStore(env["SFCHARLES_STATE_URL"])
    try:
        store.start_cycle("cycle-in-progress", "contacts", "backfill", None)
    finally:
        store.close()

    result = run_cli(["status"], env)

    assert result.returncode == 0, result.stderr
    assert "running" in result.stdout
    assert "reread" in result.stdout


def test_unopenable_state_store_exits_2(env, tmp_path) -> None:
    settings = {**env, "SFCHARLES_STATE_URL": f"sqlite:///{tmp_path / 'missing-dir' / 'state.db'}"}

    for command in (["status"], ["state", "show"], ["dead-letters", "list"], ["sync"]):
        result = run_cli(command, settings)
        assert result.returncode == 2, (command, result.stderr)
        assert "SFCHARLES_STATE_URL" in result.stderr
        assert "Traceback" not in result.stderr


def test_rewind_into_future_rejected(env) -> None:
    result = run_cli(["state", "rewind", "--to", "2999-01-01T00:00:00Z"], env)

    assert result.returncode == 2
    assert "in the future" in result.stderr
