"""The connector's exceptions, grouped by what happens next.

- ConfigurationError: an operator must fix a setting or a file. Never retried; the CLI
  exits with code 2.
- TransientError: the remote side may recover. Retried with backoff where it occurs.
- RecordError: one record cannot be delivered. It is counted with a reason and the cycle
  goes on.
- FatalError: the cycle stops and the watermark stays where it was.

Every exception the connector raises derives from ConnectorError.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Root of every error the connector raises."""


class ConfigurationError(ConnectorError):
    """A setting, a credential or a field map is wrong; an operator has to fix it."""


class TransientError(ConnectorError):
    """A remote call failed in a way that may succeed on a later attempt."""


class RecordError(ConnectorError):
    """One record could not be delivered; the cycle goes on without it."""

    def __init__(self, message: str, *, record_id: str, reason: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.record_id = record_id
        self.reason = reason
        # True when the failure was transient (retries ran out): the record holds the
        # watermark and is read again next cycle. False: Charles rejected the record
        # itself, and it is set aside in the dead-letter table.
        self.retryable = retryable


class FatalError(ConnectorError):
    """The cycle cannot go on; the watermark is not moved past unfinished work."""


class CursorOrderError(FatalError):
    """Records arrived out of (SystemModstamp, Id) order, or a watermark would move back."""

    def __init__(self, message: str, *, previous: str, current: str) -> None:
        super().__init__(message)
        self.previous = previous
        self.current = current


class LeadershipLost(FatalError):
    """This process no longer leads the pipeline; another replica may be running it."""
