"""One UTC time format for every stamp the project writes."""

from __future__ import annotations

import datetime as dt
import re

from fedgenome.shared import clock


def test_the_text_is_utc_to_the_second_with_a_z() -> None:
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    text = clock.utc_now_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text)
    parsed = dt.datetime.strptime(text, clock.TEXT_FORMAT).replace(tzinfo=dt.timezone.utc)
    assert before <= parsed <= dt.datetime.now(dt.timezone.utc)


def test_naive_times_mean_utc_and_aware_ones_are_converted() -> None:
    assert clock.utc_text(dt.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05Z"
    east = dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert clock.utc_text(dt.datetime(2024, 1, 2, 8, 34, 5, tzinfo=east)) == "2024-01-02T03:04:05Z"


def test_the_file_stamp_has_no_separators_a_file_system_refuses() -> None:
    stamp = clock.utc_stamp()
    assert re.fullmatch(r"\d{8}T\d{6}Z", stamp) and clock.utc_now().tzinfo is dt.timezone.utc
