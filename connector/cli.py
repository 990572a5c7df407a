"""Command line: ``sfcharles run | sync | backfill | check | state ...``.

Exit codes:
  0  success (also after SIGTERM/SIGINT once state is committed)
  1  the cycle failed (Salesforce, Charles or the state store); the watermark did not move past unfinished work
  2  invalid configuration, credentials or field map; nothing was synced
  3  the cycle finished but some records failed; they are sent again next cycle
  4  another sfcharles process is using the same state store, or leads the chosen pipeline
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import click

from connector import __version__
from connector.cursor import Watermark, parse_salesforce_datetime
from connector.errors import ConfigurationError, ConnectorError
from connector.logs import configure_logging, get_logger
from connector.settings import Settings, load_pipelines, load_settings
from connector.state import StateLocked
from connector.sync import CycleReport

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_PARTIAL = 3
EXIT_LOCKED = 4

log = get_logger("connector.cli")


def _fail_configuration(exc: ConfigurationError) -> NoReturn:
    log.error("config.invalid", error=str(exc))
    click.echo(f"sfcharles: {exc}", err=True)
    sys.exit(EXIT_CONFIG)


def _chosen_pipeline() -> str | None:
    context = click.get_current_context(silent=True)
    return None if context is None else context.find_root().params.get("pipeline")


def _settings() -> Settings:
    """Load the settings of the pipeline chosen with --pipeline, or of the only one configured."""
    try:
        settings = load_settings(pipeline=_chosen_pipeline())
    except ConfigurationError as exc:
        configure_logging()
        _fail_configuration(exc)
    configure_logging(settings.log_level, settings.log_format, settings.log_event_key)
    _register_secrets([settings])
    return settings


def _all_settings() -> list[Settings]:
    """Load the settings of every configured pipeline, or only of the one chosen with --pipeline."""
    chosen = _chosen_pipeline()
    if chosen is not None:
        return [_settings()]
    try:
        pipelines = load_pipelines()
    except ConfigurationError as exc:
        configure_logging()
        _fail_configuration(exc)
    first = pipelines[0]
    configure_logging(first.log_level, first.log_format, first.log_event_key)
    _register_secrets(pipelines)
    return pipelines


def _register_secrets(pipelines: list[Settings]) -> None:
    """Scrub every pipeline's secrets from log lines, also in commands that build no App."""
    from connector.app import register_settings_secrets

    for settings in pipelines:
        register_settings_secrets(settings)


def _open_store(settings: Settings) -> Any:
    """Open the state store for a command that needs no Salesforce or Charles connection."""
    from connector.state import StateStore

    try:
        return StateStore(settings.state_url)
    except ConfigurationError as exc:
        _fail_configuration(exc)
    except ConnectorError as exc:
        log.error("cli.command_failed", error_type=exc.__class__.__name__, error=str(exc))
        click.echo(f"sfcharles: {exc}", err=True)
        sys.exit(EXIT_FAILED)


def _with_app(action: Callable[[Any], int], *, stop_on_signals: bool = False, exclusive: bool = False) -> NoReturn:
    """Build the app, run ``action`` with it, map errors to exit codes, and exit.

    With ``stop_on_signals``, SIGTERM and SIGINT end a one-shot cycle the way they end
    the daemon: fetching stops, in-flight upserts finish, state is committed. With
    ``exclusive``, the state store's writer lock is held throughout.
    """
    from connector.app import App

    settings = _settings()
    try:
        app = App.build(settings)
    except ConfigurationError as exc:
        _fail_configuration(exc)
    if stop_on_signals:
        def stop(signum: int, _frame: Any) -> None:
            log.info("cli.stop_requested", signal=signal.Signals(signum).name)
            app.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    try:
        with _leading(app) if exclusive else contextlib.nullcontext():
            code = action(app)
    except ConnectorError as exc:
        code = _exit_code_for(exc)
    finally:
        app.close()
    sys.exit(code)


@contextlib.contextmanager
def _leading(app: Any) -> Any:
    """Lead the app's pipeline for the duration, or raise StateLocked.

    SQLite: the store's file lock. PostgreSQL: the pipeline's advisory lock, as a daemon
    replica takes it, so a one-off command never runs beside the replica that leads it.
    """
    if app.store.dialect != "postgresql":
        with app.store.exclusive():
            yield
        return
    from connector.leader import PostgresCoordinator, holders

    settings = app.settings
    coordinator = PostgresCoordinator(
        app.store, f"{settings.replica_id}-cli", heartbeat_s=settings.leader_heartbeat_s, lease_s=settings.leader_lease_s,
        announce=False,
    )
    coordinator.connect()
    try:
        grant = coordinator.try_acquire(settings.pipeline)
        if grant is None:
            holder = holders(app.store).get(settings.pipeline, "another process")
            raise StateLocked(
                f"pipeline {settings.pipeline} is being run by replica {holder}; "
                "run this command when no replica leads it, or stop the replicas first"
            )
        if grant.wait_s:
            log.info("leader.waiting", pipeline=settings.pipeline, wait_s=grant.wait_s, reason="the previous holder did not hand it back")
            if app.stop_event.wait(grant.wait_s):
                raise StateLocked(f"pipeline {settings.pipeline}: stopped while waiting to take it over")
        app.store.set_fence(settings.pipeline, coordinator.fence(grant))
        app.sink.guard = lambda: coordinator.check(grant)
        # Lookups and pushes check that the lock is still held; keep it confirmed meanwhile.
        done = threading.Event()

        def beat() -> None:
            while not done.wait(settings.leader_heartbeat_s):
                if not coordinator.heartbeat():
                    app.stop_event.set()
                    return

        beater = threading.Thread(target=beat, name="leader-heartbeat", daemon=True)
        beater.start()
        try:
            app.store.abandon_running_cycles(settings.pipeline)
            yield
        finally:
            done.set()
            beater.join()
            app.store.set_fence(settings.pipeline, None)
            coordinator.release(grant)
    finally:
        coordinator.close()


def _exit_code_for(exc: ConnectorError) -> int:
    """Log a command's error and return its exit code. A configuration error exits with code 2 at once."""
    if isinstance(exc, StateLocked):
        log.error("state.locked", error=str(exc))
        click.echo(f"sfcharles: {exc}", err=True)
        return EXIT_LOCKED
    if isinstance(exc, ConfigurationError):
        _fail_configuration(exc)
    log.error("cli.command_failed", error_type=exc.__class__.__name__, error=str(exc))
    return EXIT_FAILED


def _exit_code(report: CycleReport) -> int:
    return {"succeeded": EXIT_OK, "interrupted": EXIT_OK, "partial": EXIT_PARTIAL}.get(report.status, EXIT_FAILED)


def _parse_time(_ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_salesforce_datetime(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sfcharles")
@click.option(
    "--pipeline",
    metavar="NAME",
    help="The pipeline a command acts on, when the config file lists several. `run` and `status` take all by default.",
)
def main(pipeline: str | None) -> None:
    """Keep Charles contacts in step with Salesforce.

    Settings come from SFCHARLES_* environment variables (see README.md). Exit codes:
    0 success, 1 cycle failed, 2 invalid configuration, 3 some records failed,
    4 another sfcharles process uses the same state store or leads the pipeline.
    """


@main.command()
def run() -> NoReturn:
    """Run the daemon: every pipeline it leads, a cycle at start and then one every poll interval.

    With a PostgreSQL state store, several replicas divide the pipelines among themselves
    and take over those of a replica that stops.
    """
    from connector.app import App
    from connector.leader import LocalCoordinator, PostgresCoordinator
    from connector.metrics import serve_metrics
    from connector.scheduler import Daemon, PipelineRunner, Supervisor

    pipelines = _all_settings()
    process = pipelines[0]
    store = _open_store(process)
    stop_event = threading.Event()
    apps: list[Any] = []
    code = EXIT_FAILED
    try:
        replicated = store.dialect == "postgresql"
        with contextlib.nullcontext() if replicated else store.exclusive():
            for settings in pipelines:
                apps.append(App.build(settings, store=store))
            if not replicated:
                _check_at_start(apps)
            coordinator: Any
            if replicated:
                coordinator = PostgresCoordinator(
                    store, process.replica_id, heartbeat_s=process.leader_heartbeat_s, lease_s=process.leader_lease_s
                )
                coordinator.connect()
            else:
                coordinator = LocalCoordinator(process.replica_id)
            longest = max(settings.poll_interval_s for settings in pipelines)
            with serve_metrics(process, poll_interval_s=longest, pipelines=[settings.pipeline for settings in pipelines]) as metrics:
                runners = [
                    PipelineRunner(app.settings, app, Daemon(_cycle(app), app.settings, app.stop_event, usage_probe=_usage_probe(app), metrics=metrics))
                    for app in apps
                ]
                supervisor = Supervisor(
                    runners, coordinator, store, stop_event, settings=process, metrics=metrics,
                    reconnect=coordinator.connect if replicated else None,
                )
                code = supervisor.run()
    except ConnectorError as exc:
        code = _exit_code_for(exc)
    finally:
        for app in apps:
            app.close()
        store.close()
    sys.exit(code)


def _check_at_start(apps: list[Any]) -> None:
    """Check each field map against Salesforce before the first tick; a mismatch is a configuration error."""
    import structlog

    for app in apps:
        with structlog.contextvars.bound_contextvars(pipeline=app.settings.pipeline):
            try:
                app.syncer()
            except ConfigurationError:
                raise
            except ConnectorError as exc:
                log.warning("daemon.startup_check_deferred", error_type=exc.__class__.__name__, error=str(exc))


def _cycle(app: Any) -> Callable[[], CycleReport]:
    def cycle() -> CycleReport:
        try:
            syncer = app.syncer()
        except ConfigurationError as exc:
            log.error("daemon.pipeline_check_failed", error=str(exc))
            raise
        return syncer.run_cycle("incremental")

    return cycle


def _usage_probe(app: Any) -> Callable[[], Any]:
    def probe() -> Any:
        app.source.server_time()  # one cheap call that returns the usage header
        return app.source.api_usage

    return probe


@main.command()
def sync() -> NoReturn:
    """Run one incremental cycle now, then exit."""
    _with_app(lambda app: _exit_code(app.syncer().run_cycle("incremental")), stop_on_signals=True, exclusive=True)


@main.command()
@click.option("--since", callback=_parse_time, help="Start of the window (ISO 8601 with offset, e.g. 2025-01-01T00:00:00Z). Default: the beginning.")
@click.option("--until", callback=_parse_time, help="End of the window, exclusive (ISO 8601 with offset). Default: Salesforce's current time.")
@click.option("--force", is_flag=True, help="Send every record, even those whose mapped payload Charles already accepted.")
@click.option(
    "--restart",
    is_flag=True,
    help="Start at --since even if an earlier backfill with the same --since stopped part-way. By default it resumes there.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the number of records, whether Bulk API 2.0 would read them, and sample payloads as JSON; send nothing.",
)
def backfill(since: datetime | None, until: datetime | None, force: bool, restart: bool, dry_run: bool) -> NoReturn:
    """Re-read every record changed in a window and send what changed; never moves the watermark backwards.

    More than SFCHARLES_BULK_THRESHOLD records are read through a Bulk API 2.0 query job.
    A progress bar is shown on stderr when stderr is a terminal.
    """
    from connector.backfill import plan_backfill, progress_bar

    if since is not None and until is not None and since >= until:
        raise click.BadParameter(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    if dry_run:
        def plan(app: Any) -> int:
            # Log lines go to stderr, so stdout contains only the JSON document.
            settings = app.settings
            configure_logging(settings.log_level, settings.log_format, settings.log_event_key, stream=sys.stderr)
            document = plan_backfill(app, since=since, until=until, restart=restart)
            click.echo(json.dumps(document, indent=2, ensure_ascii=False))
            return EXIT_OK

        _with_app(plan)

    def action(app: Any) -> int:
        with progress_bar() as on_page:
            report = app.syncer().run_cycle("backfill", since=since, until=until, force=force, restart=restart, on_page=on_page)
        return _exit_code(report)

    _with_app(action, stop_on_signals=True, exclusive=True)


@main.command()
def check() -> NoReturn:
    """Check settings, Salesforce credentials, and the field map against Salesforce's describe, for every pipeline."""

    def action(app: Any) -> int:
        app.source.login()
        problems = app.check_field_map()
        usage = app.source.api_usage
        result = {
            "settings": "ok",
            "salesforce_login": "ok",
            "object": app.field_map.object_name,
            "field_map": "ok" if not problems else "invalid",
            "problems": problems,
            "salesforce_fields_read": app.field_map.source_fields(),
            "state_store": app.store.describe(),
            # NOTE: the Charles API has no read-only endpoint, so the key is first tested by a real upsert.
            "charles": "not checked: the API has no read-only call; the first upsert tests the key",
            "api_usage": None if usage is None else {"used": usage.used, "limit": usage.limit},
        }
        log.info("check.completed", **result)
        if problems:
            click.echo(f"sfcharles: {prefix}field map does not match Salesforce:\n" + "\n".join(f"  - {p}" for p in problems), err=True)
        return EXIT_OK if not problems else EXIT_CONFIG

    import structlog

    from connector.app import App

    pipelines = _all_settings()
    code = EXIT_OK
    for settings in pipelines:
        # With several pipelines, each is checked and a problem names its pipeline.
        prefix = f"pipeline {settings.pipeline}: " if len(pipelines) > 1 else ""
        with structlog.contextvars.bound_contextvars(pipeline=settings.pipeline):
            app = None
            try:
                app = App.build(settings)
                code = max(code, action(app))
            except ConfigurationError as exc:
                log.error("config.invalid", error=str(exc))
                click.echo(f"sfcharles: {prefix}{exc}", err=True)
                code = max(code, EXIT_CONFIG)
            except ConnectorError as exc:
                log.error("cli.command_failed", error_type=exc.__class__.__name__, error=str(exc))
                code = max(code, EXIT_FAILED)
            finally:
                if app is not None:
                    app.close()
    sys.exit(code)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--cycles", default=10, show_default=True, help="How many recent cycles to list.")
def status(as_json: bool, cycles: int) -> None:
    """Show each pipeline's watermark and lag, which replica runs it, recent cycles, set-aside records and API usage.

    With one pipeline, --json prints its object; with several, an object with a list of them.
    """
    from connector.leader import holders

    pipelines = _all_settings()
    store = _open_store(pipelines[0])
    try:
        held = holders(store)
        infos = []
        for settings in pipelines:
            info = _status_info(store, settings.pipeline, cycles)
            # Only replicas on PostgreSQL have a holder to show; a SQLite store has one process.
            info["held_by"] = held.get(settings.pipeline) if store.dialect == "postgresql" else None
            infos.append(info)
    finally:
        store.close()
    if as_json:
        document = infos[0] if len(infos) == 1 else {"state_store": infos[0]["state_store"], "pipelines": infos}
        click.echo(json.dumps(document, indent=2))
        return
    for number, info in enumerate(infos):
        if number:
            click.echo("")
        _print_status(info)


def _print_status(info: dict[str, Any]) -> None:
    usage = info["salesforce_api"]
    click.echo(f"pipeline:          {info['pipeline']}")
    click.echo(f"state store:       {info['state_store']}")
    if info["state_store"].startswith("postgresql"):
        click.echo(f"run by:            {info['held_by'] or '(no replica: waiting for one to take it)'}")
    click.echo(f"watermark:         {info['watermark'] or '(none: the next cycle reads everything)'}")
    click.echo(f"watermark lag:     {_seconds(info['watermark_lag_s'])} behind Salesforce at the last cycle")
    click.echo(f"last success:      {info['last_success_at'] or '-'}")
    click.echo(f"dead letters:      {info['dead_letters']}")
    usage_text = "-" if usage is None else f"{usage['used']} of {usage['limit']} daily requests used"
    click.echo(f"Salesforce API:    {usage_text}")
    click.echo("recent cycles:")
    click.echo(
        f"  {'started':<25} {'mode':<11} {'status':<11} {'fetched':>8} {'pushed':>7} {'unchanged':>9} {'reread':>7} "
        f"{'skipped':>7} {'failed':>6} {'seconds':>8}"
    )
    for cycle in info["recent_cycles"]:
        # A running or abandoned cycle has no summary yet, so its summary fields are None.
        click.echo(
            f"  {cycle['started_at']:<25} {cycle['mode']:<11} {cycle['status']:<11} {cycle['fetched']:>8} {cycle['pushed']:>7} "
            f"{cycle.get('unchanged') or 0:>9} {cycle.get('reread') or 0:>7} {cycle['skipped']:>7} {cycle['failed']:>6} "
            f"{_seconds(cycle.get('duration_s')):>8}"
        )


def _status_info(store: Any, pipeline: str, limit: int) -> dict[str, Any]:
    watermark = store.get_watermark(pipeline)
    recent = []
    for cycle in store.recent_cycles(pipeline, limit):
        summary = json.loads(cycle.summary) if cycle.summary else {}
        recent.append({**{k: v for k, v in cycle.__dict__.items() if k != "summary"}, **{k: summary.get(k) for k in ("unchanged", "reread", "set_aside", "failed_by_reason", "duration_s", "watermark_lag_s", "salesforce_api_used", "salesforce_api_limit", "error_type")}})
    finished = [cycle for cycle in recent if cycle["status"] != "running"]
    last = finished[0] if finished else None
    # As in the metrics: a partial cycle counts as a success when its only failures were set aside.
    successes = [
        cycle for cycle in finished
        if cycle["status"] == "succeeded" or (cycle["status"] == "partial" and not cycle.get("failed_by_reason"))
    ]
    usage = None
    if last is not None and last.get("salesforce_api_limit"):
        usage = {"used": last["salesforce_api_used"], "limit": last["salesforce_api_limit"]}
    return {
        "pipeline": pipeline,
        "state_store": store.describe(),
        "watermark": None if watermark is None else str(watermark),
        "watermark_lag_s": None if last is None else last.get("watermark_lag_s"),
        "last_success_at": successes[0]["finished_at"] if successes else None,
        "dead_letters": store.dead_letter_count(pipeline),
        "salesforce_api": usage,
        "recent_cycles": recent,
    }


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value} s"


@main.group("dead-letters")
def dead_letters() -> None:
    """List, replay or discard records set aside because Charles rejected them."""


@dead_letters.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def dead_letters_list(as_json: bool) -> None:
    """List set-aside records with their reason, Charles' error and attempt count."""
    from connector.state import StateStore

    settings = _settings()
    store = _open_store(settings)
    try:
        letters = store.dead_letters(settings.pipeline)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([letter.__dict__ for letter in letters], indent=2))
        return
    if not letters:
        click.echo("no dead letters")
        return
    for letter in letters:
        click.echo(f"{letter.record_id}  {letter.reason:<32} attempts={letter.attempts}  last={letter.last_failed_at}  {letter.error or ''}")


@dead_letters.command("retry")
@click.argument("record_id", required=False)
def dead_letters_retry(record_id: str | None) -> NoReturn:
    """Send set-aside records again now: RECORD_ID, or all of them."""
    ids = None if record_id is None else [record_id]

    def action(app: Any) -> int:
        if ids is not None and ids[0] not in {letter.record_id for letter in app.store.dead_letters(app.settings.pipeline)}:
            click.echo(f"sfcharles: no dead letter for record {record_id!r}; see `sfcharles dead-letters list`", err=True)
            return EXIT_FAILED
        return _exit_code(app.syncer().replay_dead_letters(ids))

    _with_app(action, stop_on_signals=True, exclusive=True)


@dead_letters.command("discard")
@click.argument("record_id")
def dead_letters_discard(record_id: str) -> None:
    """Forget a set-aside record; it is sent again only when it changes in Salesforce."""
    from connector.state import StateStore

    settings = _settings()
    store = _open_store(settings)
    try:
        found = store.discard_dead_letter(settings.pipeline, record_id)
    finally:
        store.close()
    if not found:
        click.echo(f"sfcharles: no dead letter for record {record_id!r}; see `sfcharles dead-letters list`", err=True)
        sys.exit(EXIT_FAILED)
    log.info("state.dead_letter_discarded", record_id=record_id)


@main.group()
def state() -> None:
    """Inspect or rewind the stored watermark."""


@state.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--cycles", default=5, show_default=True, help="How many recent cycles to list.")
def state_show(as_json: bool, cycles: int) -> None:
    """Print the watermark, its lag behind now, and the last cycles."""
    from connector.backfill import BackfillProgress
    from connector.state import StateStore

    settings = _settings()
    store = _open_store(settings)
    try:
        watermark = store.get_watermark(settings.pipeline)
        recent = store.recent_cycles(settings.pipeline, cycles)
        unfinished_backfill = BackfillProgress(store, settings.pipeline).stored()
    finally:
        store.close()
    # Lag is shown against the local clock: it is for people, not for the cursor.
    lag_s = None if watermark is None else round((datetime.now(UTC) - watermark.modstamp).total_seconds(), 1)
    info = {
        "pipeline": settings.pipeline,
        "state_store": store.describe(),
        "watermark": None if watermark is None else watermark.to_dict(),
        "lag_s": lag_s,
        "backfill": None if unfinished_backfill is None else {
            "window_start": unfinished_backfill[0].to_dict()["modstamp"], "handled_until": unfinished_backfill[1].to_dict(),
        },
        "recent_cycles": [cycle.__dict__ for cycle in recent],
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"pipeline:   {info['pipeline']}")
    click.echo(f"store:      {info['state_store']}")
    click.echo(f"watermark:  {watermark if watermark else '(none: the next cycle reads everything)'}")
    click.echo(f"lag:        {'-' if lag_s is None else f'{lag_s} s'}")
    if unfinished_backfill is not None:
        click.echo(f"backfill:   stopped at {unfinished_backfill[1]}; `backfill` with the same --since resumes there")
    click.echo("recent cycles:")
    for cycle in recent:
        click.echo(
            f"  {cycle.started_at}  {cycle.mode:<11} {cycle.status:<11} fetched={cycle.fetched} "
            f"pushed={cycle.pushed} skipped={cycle.skipped} failed={cycle.failed}"
        )


@state.command("rewind")
@click.option("--to", "to", required=True, callback=_parse_time, help="New watermark time (ISO 8601 with offset); the next cycle re-reads from here.")
def state_rewind(to: datetime) -> None:
    """Move the watermark to a chosen time, backwards included, so the next cycle re-reads from there."""
    if to > datetime.now(UTC):
        # Operator input is checked against the local clock; a future watermark would skip changes.
        raise click.BadParameter(f"{to.isoformat()} is in the future; the next cycles would skip every change until then", param_hint="--to")
    from connector.state import StateStore

    settings = _settings()
    store = _open_store(settings)
    try:
        before = store.get_watermark(settings.pipeline)
        store.set_watermark(settings.pipeline, Watermark.start_of(to))
        log.info(
            "state.watermark_set", pipeline=settings.pipeline, before=None if before is None else str(before), after=str(Watermark.start_of(to))
        )
    finally:
        store.close()


@state.command("reset")
@click.confirmation_option(prompt="Delete the watermark? The next cycle re-reads every record.")
def state_reset() -> None:
    """Delete the watermark; the next cycle reads every record again."""
    from connector.state import StateStore

    settings = _settings()
    store = _open_store(settings)
    try:
        store.set_watermark(settings.pipeline, None)
        log.info("state.watermark_reset", pipeline=settings.pipeline)
    finally:
        store.close()


@main.command()
@click.option("--id", "ids", multiple=True, metavar="ID", help="Salesforce Id of a record to preview; repeat for several (at most 200).")
@click.option(
    "--where",
    metavar="SOQL",
    help="SOQL condition choosing the records, sent to Salesforce as written as the WHERE of a SELECT over the map's fields.",
)
@click.option(
    "--file",
    "records_file",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON file of records (a list, or an object with a records list); Salesforce is not contacted.",
)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 2000), help="Maximum number of records read with --where.")
@click.option(
    "--map", "map_path", type=click.Path(exists=True, dir_okay=False), help="Field map file to use instead of SFCHARLES_FIELD_MAP."
)
def preview(ids: tuple[str, ...], where: str | None, records_file: str | None, limit: int, map_path: str | None) -> NoReturn:
    """Print, as JSON, the upsert bodies that records would produce; nothing is sent to Charles.

    Choose the records with --id, --where or --file. Each result has the payload and a
    note for every dropped value, or the reason the record would be skipped. Log lines go
    to stderr, so stdout contains only the JSON document.
    """
    from pathlib import Path

    from connector.preview import run_preview

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format, settings.log_event_key, stream=sys.stderr)
    try:
        document = run_preview(
            settings,
            ids=ids,
            where=where,
            records_file=Path(records_file) if records_file else None,
            limit=limit,
            map_path=Path(map_path) if map_path else None,
        )
    except ConfigurationError as exc:
        _fail_configuration(exc)
    except ConnectorError as exc:
        log.error("cli.command_failed", error_type=exc.__class__.__name__, error=str(exc))
        sys.exit(EXIT_FAILED)
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    sys.exit(EXIT_OK)
