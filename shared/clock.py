"""The project's one clock format: UTC, ISO 8601, to the second, with a ``Z`` (``2024-05-01T12:00:00Z``).

Logs, checkpoints' metadata, journals and commitments stamp their time with :func:`utc_now_text`;
:func:`utc_now` is the aware datetime behind it, for code that computes with time (certificates);
:func:`utc_stamp` is the same instant for file names (no ``:``).
"""

from __future__ import annotations

import datetime as dt

TEXT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""The ``strftime`` format of :func:`utc_now_text`."""
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
"""The ``strftime`` format of :func:`utc_stamp` (safe in file names)."""


def utc_now() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.timezone.utc)


def utc_text(when: dt.datetime) -> str:
    """``when`` (aware, or naive meaning UTC) as ``YYYY-MM-DDTHH:MM:SSZ``.

    >>> utc_text(dt.datetime(2024, 5, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))))
    '2024-05-01T12:00:00Z'
    """
    aware = when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)
    return aware.astimezone(dt.timezone.utc).strftime(TEXT_FORMAT)


def utc_now_text() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return utc_text(utc_now())


def utc_stamp() -> str:
    """The current UTC time as ``YYYYMMDDTHHMMSSZ``, for file names."""
    return utc_now().strftime(STAMP_FORMAT)
