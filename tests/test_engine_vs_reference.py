"""The vectorised engine equals the plain reference implementation on thousands of random stores."""
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import reference
from report_generator import EXTENDED_COLUMNS, compute_report

UTC = timezone.utc
# Reference instants: ordinary weeks, and weeks around DST changes: the US and Alaska (March and
# November 2023), Lord Howe's half-hour changes (April and October 2023), Europe (March 2023), and
# Samoa skipping 30 December 2011 altogether.
NOWS = [datetime(2023, 1, 25, 18, 13, 22, tzinfo=UTC), datetime(2023, 3, 13, 7, 30, tzinfo=UTC),
        datetime(2023, 3, 16, 2, 0, tzinfo=UTC), datetime(2023, 11, 6, 8, 15, tzinfo=UTC),
        datetime(2023, 11, 9, 12, 0, tzinfo=UTC), datetime(2024, 3, 12, 0, 0, tzinfo=UTC),
        datetime(2023, 4, 3, 10, 0, tzinfo=UTC), datetime(2023, 10, 2, 22, 0, tzinfo=UTC),
        datetime(2023, 3, 27, 5, 0, tzinfo=UTC), datetime(2012, 1, 2, 12, 0, tzinfo=UTC)]
ZONES = ["America/Chicago", "America/New_York", "America/Denver", "America/Los_Angeles", "America/Phoenix",
         "America/Anchorage", "Pacific/Honolulu", "Asia/Beirut", "Europe/London", "Australia/Lord_Howe",
         "Pacific/Apia", " America/Boise ", "", None, "Not/A_Zone"]
TIMES = ["00:00:00", "00:01:00", "01:00:00", "01:30:00", "02:00:00", "02:30:00", "03:00:00", "09:00:00",
         "11:59:30.5", "12:00:00", "17:00:00", "22:00:00", "23:00:00", "23:59:59", "23:59:59.999"]


def random_dataset(rng: np.random.Generator, n_stores: int, now_us: int):
    polls, hours, zones = [], [], {}
    for n in range(n_stores):
        store = f"{rng.integers(-10**18, 10**18)}-{n}"
        zone = ZONES[rng.integers(len(ZONES))]
        if zone is not None:
            zones[store] = zone
        shape = rng.random()
        if shape < 0.1:  # open all week, or all week but one slot that a DST gap may remove
            hours += [(store, day, "00:00:00", "23:59:59") for day in range(6)]
            hours += [(store, 6, "00:00:00", "02:00:00"), (store, 6, ["02:00:00", "03:00:00"][rng.integers(2)],
                                                             "23:59:59")]
        elif shape < 0.75:  # otherwise 24/7
            for _ in range(rng.integers(0, 6)):
                start, end = TIMES[rng.integers(len(TIMES))], TIMES[rng.integers(len(TIMES))]
                hours.append((store, int(rng.integers(0, 7)), start, end))
        kind = rng.random()
        if kind < 0.1:  # a few polls, some long before the week
            stamps = now_us - rng.integers(0, 40 * reference.DAY, size=rng.integers(1, 4))
        elif kind < 0.2:  # polls at exact instants: on the hour, duplicates, at now
            stamps = now_us - reference.HOUR * rng.integers(0, 24 * 9, size=rng.integers(1, 12))
            stamps = np.concatenate([stamps, stamps[:2], [now_us]])
        else:  # roughly hourly with gaps over about nine days, plus a few after now
            count = int(rng.integers(0, 60))
            stamps = now_us - rng.integers(-2 * reference.HOUR, 9 * reference.DAY, size=count)
        for t in stamps:
            polls.append((store, int(t), "active" if rng.random() < 0.7 else "inactive"))
    return polls, hours, zones


def engine_rows(polls, hours, zones, now_us):
    frame = compute_report(
        pd.DataFrame([(s, pd.Timestamp(t, unit="us", tz="UTC"), st_) for s, t, st_ in polls],
                     columns=["store_id", "timestamp_utc", "status"]),
        pd.DataFrame(hours, columns=["store_id", "day_of_week", "start_time_local", "end_time_local"]),
        pd.DataFrame(list(zones.items()), columns=["store_id", "timezone_str"]),
        pd.Timestamp(now_us, unit="us", tz="UTC"), extended=True)
    return frame[EXTENDED_COLUMNS].to_dict("records")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(seed=st.integers(0, 2**32 - 1), which_now=st.integers(0, len(NOWS) - 1))
def test_engine_equals_reference_on_random_stores(seed, which_now):
    rng = np.random.default_rng(seed)
    now_us = reference.to_us(NOWS[which_now]) + int(rng.integers(0, 3600)) * reference.US
    polls, hours, zones = random_dataset(rng, 120, now_us)
    expected = reference.report(polls, hours, zones, now_us)
    actual = engine_rows(polls, hours, zones, now_us)
    assert [r["store_id"] for r in actual] == [r["store_id"] for r in expected]
    for got, want in zip(actual, expected):
        assert got == pytest.approx(want, abs=1e-9), got["store_id"]


@pytest.mark.parametrize("polls, hours, now, expected", [
    # Worked example 1 of the semantics page, through the reference itself.
    ([("s", "2023-01-23 16:14:00", "active"), ("s", "2023-01-23 17:15:00", "inactive")],
     [("s", 0, "09:00:00", "12:00:00")], "2023-01-23 18:00:00",
     {"uptime_last_hour": 0, "downtime_last_hour": 60, "uptime_last_day": 1.74, "downtime_last_day": 1.26}),
    # Worked example 4: the spring-forward interval is three hours.
    ([("s", "2023-03-12 08:30:00", "active")], [("s", 6, "01:00:00", "05:00:00")], "2023-03-12 12:00:00",
     {"uptime_last_week": 3, "unknown_last_week": 0}),
])
def test_reference_reproduces_worked_examples(polls, hours, now, expected):
    as_us = [(s, reference.to_us(pd.Timestamp(t, tz="UTC").to_pydatetime()), st_) for s, t, st_ in polls]
    [got] = reference.report(as_us, hours, {"s": "America/Chicago"},
                             reference.to_us(pd.Timestamp(now, tz="UTC").to_pydatetime()))
    assert {k: got[k] for k in expected} == pytest.approx(expected)


def test_reference_local_to_utc_rules():
    chicago = reference.ZoneInfo("America/Chicago")
    gap = reference.local_to_utc_us(datetime(2023, 3, 12, 2, 30), chicago)
    fold = reference.local_to_utc_us(datetime(2023, 11, 5, 1, 30), chicago)
    assert reference.from_us(gap) == datetime(2023, 3, 12, 8, 0, tzinfo=UTC)
    assert reference.from_us(fold) == datetime(2023, 11, 5, 6, 30, tzinfo=UTC)
