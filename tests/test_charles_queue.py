"""CharlesSink queues upserts beyond the open ones, but never opens more than max_in_flight."""

from __future__ import annotations

import threading
import time

from connector.charles import CharlesSink, queued_upserts
from tests.conftest import settings_from


def payload(n: int) -> dict[str, str]:
    return {"external_reference_id": f"+1415555{n:04d}", "source_type": "salesforce", "last_name": f"N{n}"}


def test_submit_queues_beyond_open_upserts(charles, env) -> None:
    charles.set_latency(0.5)
    sink = CharlesSink(settings_from(env, charles_max_in_flight="2"))
    slots = 2 + queued_upserts(2)
    peak = 0
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, charles.in_flight)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        started = time.monotonic()
        futures = [sink.submit(f"003{n:012d}AAA", payload(n)) for n in range(slots)]
        queued_s = time.monotonic() - started
        futures.append(sink.submit("003999999999999AAA", payload(9999)))
        blocked_s = time.monotonic() - started
        for future in futures:
            future.result(timeout=30)
    finally:
        sampling = False
        sampler.join()

    assert queued_s < 0.4, "submits up to the queue's size return without waiting for Charles"
    assert blocked_s >= 0.4, "one more submit waits until an upsert finishes"
    assert peak <= 2
    assert len(charles.upserts) == slots + 1
