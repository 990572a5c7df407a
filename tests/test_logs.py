import io
import json
import logging

import structlog

from connector.logs import REDACTED, configure_logging, get_logger, register_secrets


def capture(**kwargs) -> io.StringIO:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream, **kwargs)
    return stream


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line() -> None:
    stream = capture()
    get_logger("connector.test").info("test.event", count=3)
    [line] = lines(stream)
    assert line["event"] == "test.event"
    assert line["count"] == 3
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")


def test_secret_keys_masked() -> None:
    stream = capture()
    get_logger("connector.test").info("test.event", api_key="abc", nested={"access_token": "xyz"})
    [line] = lines(stream)
    assert line["api_key"] == REDACTED
    assert line["nested"]["access_token"] == REDACTED


def test_registered_secret_scrubbed_everywhere() -> None:
    register_secrets(["very-secret-value-42"])
    stream = capture()
    get_logger("connector.test").info("test.event", detail="key very-secret-value-42 leaked")
    logging.getLogger("httpx").warning("header very-secret-value-42")
    assert "very-secret-value-42" not in stream.getvalue()
    assert stream.getvalue().count(REDACTED) == 2


def test_traceback_has_no_locals() -> None:
    stream = capture()
    log = get_logger("connector.test")
    try:
        password_in_local = "local-secret-zz9"  # noqa: F841 - the value must not be rendered
        raise ValueError("boom")
    except ValueError:
        log.exception("test.failed")
    output = stream.getvalue()
    assert "local-secret-zz9" not in output
    assert "boom" in output


def test_library_lines_share_context() -> None:
    stream = capture()
    with structlog.contextvars.bound_contextvars(cycle_id="cyc-1"):
        logging.getLogger("apscheduler.executors.default").warning("job %s ran late", "sync")
    [line] = lines(stream)
    assert line["event"] == "job sync ran late"
    assert line["cycle_id"] == "cyc-1"
    assert line["logger"] == "apscheduler.executors.default"


def test_event_key_renamed_for_elastic() -> None:
    stream = capture(event_key="message")
    get_logger("connector.test").info("test.event")
    [line] = lines(stream)
    assert line["message"] == "test.event"
    assert "event" not in line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_format_console_on_terminal() -> None:
    stream = Terminal()
    configure_logging("INFO", "auto", stream=stream)
    get_logger("connector.test").info("test.event", count=3)
    output = stream.getvalue()
    assert "test.event" in output
    assert not output.lstrip().startswith("{")


def test_auto_format_json_when_piped() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "auto", stream=stream)
    get_logger("connector.test").info("test.event", count=3)
    [line] = lines(stream)
    assert line["event"] == "test.event"
