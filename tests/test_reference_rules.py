"""The reference implementation (tests/reference.py) against docs/report-semantics.md by hand.

Every expectation here is computed by hand from the contract, so the reference that checks the engine is
itself checked. Times in comments are local America/Chicago (UTC-6 in winter, UTC-5 in summer) unless
marked UTC.
"""
from datetime import datetime, timedelta, timezone

import pytest

import reference

UTC = timezone.utc
H = reference.HOUR
EVERY_DAY_9_TO_5 = [(day, "09:00:00", "17:00:00") for day in range(7)]


def us(text: str) -> int:
    """'2023-01-23 16:14:00' (UTC) -> microseconds since the epoch."""
    return reference.to_us(datetime.fromisoformat(text).replace(tzinfo=UTC))


def hourly(first: str, last: str, status: str = "active"):
    """Polls on every hour from `first` to `last` inclusive (UTC)."""
    return [(t, status) for t in range(us(first), us(last) + 1, H)]


def one_row(polls, hours, now, special=(), zone="America/Chicago", **options):
    """The reference's row for a single store "s"; polls are (UTC text or microseconds, status)."""
    rows = reference.report([("s", us(t) if isinstance(t, str) else t, status) for t, status in polls],
                            [("s", *row) for row in hours], {"s": zone}, us(now),
                            special=[("s", *row) for row in special], **options)
    assert len(rows) == 1
    return rows[0]


def expect(row, **expected):
    assert {key: row[key] for key in expected} == pytest.approx(expected, abs=1e-9), row


def expect_all(row, **expected):
    """All nine numbers: the unnamed ones must be 0."""
    full = {f"{kind}_last_{w}": 0 for kind in ("uptime", "downtime", "unknown") for w in ("hour", "day", "week")}
    full.update(expected)
    expect(row, **full)


# --- the worked examples of the contract, verbatim -----------------------------------------------------

def test_worked_example_1_monday_morning():
    row = one_row([("2023-01-23 16:14:00", "active"), ("2023-01-23 17:15:00", "inactive")],
                  [(0, "09:00:00", "12:00:00")], "2023-01-23 18:00:00")
    # The Monday a week earlier ends (18:00 UTC) exactly where the week window begins: nothing unknown.
    expect_all(row, downtime_last_hour=60, uptime_last_day=1.74, downtime_last_day=1.26,
               uptime_last_week=1.74, downtime_last_week=1.26)


def test_worked_example_2_overnight_friday():
    row = one_row([("2023-01-28 05:00:00", "active"), ("2023-01-28 07:00:00", "inactive")],
                  [(4, "22:00:00", "02:00:00")], "2023-01-28 08:30:00")
    expect_all(row, downtime_last_hour=30, uptime_last_day=2, downtime_last_day=2,
               uptime_last_week=2, downtime_last_week=2)


def test_worked_example_3_24_7_default_reach():
    row = one_row([("2023-01-28 10:00:00", "active"), ("2023-01-28 11:00:00", "inactive")],
                  [], "2023-01-28 11:30:00")
    # Up 08:00-10:30 UTC (the first poll speaks back 120 min), down 10:30-11:30; the rest unknown.
    expect_all(row, downtime_last_hour=60, uptime_last_day=2.5, downtime_last_day=1, unknown_last_day=20.5,
               uptime_last_week=2.5, downtime_last_week=1, unknown_last_week=164.5)


def test_worked_example_3_24_7_unbounded_reach():
    row = one_row([("2023-01-28 10:00:00", "active"), ("2023-01-28 11:00:00", "inactive")],
                  [], "2023-01-28 11:30:00", reach_us=None)
    expect_all(row, downtime_last_hour=60, uptime_last_day=23, downtime_last_day=1,
               uptime_last_week=167, downtime_last_week=1)


def test_worked_example_4_spring_forward_interval_is_three_hours():
    row = one_row([("2023-03-12 08:30:00", "active")], [(6, "01:00:00", "05:00:00")], "2023-03-12 12:00:00")
    expect_all(row, uptime_last_day=3, uptime_last_week=3)


def test_worked_example_5_reach_default():
    row = one_row([("2023-01-20 12:00:00", "active")], [], "2023-01-25 12:00:00")
    expect_all(row, unknown_last_hour=60, unknown_last_day=24, uptime_last_week=4, unknown_last_week=164)


def test_worked_example_5_reach_unbounded():
    row = one_row([("2023-01-20 12:00:00", "active")], [], "2023-01-25 12:00:00", reach_us=None)
    expect_all(row, uptime_last_hour=60, uptime_last_day=24, uptime_last_week=168)


@pytest.mark.parametrize("closed", [("", ""), (None, None), ("", None)])
def test_worked_example_6_special_hours(closed):
    row = one_row(hourly("2023-01-10 00:00:00", "2023-01-25 00:00:00"), EVERY_DAY_9_TO_5,
                  "2023-01-25 00:00:00", special=[("2023-01-24", *closed), ("2023-01-23", "12:00:00", "14:00:00")])
    expect_all(row, uptime_last_week=42)


# --- reach, by hand -------------------------------------------------------------------------------------

TWO_POLLS_TEN_HOURS_APART = [("2023-01-28 00:00:00", "active"), ("2023-01-28 10:00:00", "inactive")]


def test_reach_leaves_the_middle_of_a_long_gap_unknown():
    # 24/7. Up 22:00 (UTC, the day before) - 02:00, unknown 02:00 - 08:00, down 08:00 - now (10:30).
    row = one_row(TWO_POLLS_TEN_HOURS_APART, [], "2023-01-28 10:30:00")
    expect_all(row, downtime_last_hour=60, uptime_last_day=4, downtime_last_day=2.5, unknown_last_day=17.5,
               uptime_last_week=4, downtime_last_week=2.5, unknown_last_week=161.5)


def test_reach_of_half_the_gap_covers_it_exactly():
    # Reach 5 h: the polls meet at the midpoint 05:00 UTC; up from 19:00 the day before.
    row = one_row(TWO_POLLS_TEN_HOURS_APART, [], "2023-01-28 10:30:00", reach_us=5 * H)
    expect_all(row, downtime_last_hour=60, uptime_last_day=10, downtime_last_day=5.5, unknown_last_day=8.5,
               uptime_last_week=10, downtime_last_week=5.5, unknown_last_week=152.5)


def test_unbounded_reach_is_the_classic_nearest_poll():
    row = one_row(TWO_POLLS_TEN_HOURS_APART, [], "2023-01-28 10:30:00", reach_us=None)
    expect_all(row, downtime_last_hour=60, uptime_last_day=18.5, downtime_last_day=5.5,
               uptime_last_week=162.5, downtime_last_week=5.5)


# Monday 2023-01-23 09:00-17:00 (15:00-23:00 UTC). Evidence: 09:30 active, 16:30 inactive (midpoint 13:00);
# the polls at 08:50 and 17:10 are outside business hours and never speak, however near. now = 18:00.
EDGE_POLLS = [("2023-01-23 14:50:00", "inactive"), ("2023-01-23 15:30:00", "active"),
              ("2023-01-23 22:30:00", "inactive"), ("2023-01-23 23:10:00", "active")]


@pytest.mark.parametrize("reach_us, up, down", [
    (60 * reference.MINUTE, 1.5, 1.5),  # 09:00-10:30 up (reach cut by the opening), 15:30-17:00 down
    (30 * reference.MINUTE, 1, 1),  # 09:00-10:00 up, 16:00-17:00 down
    (0, 0, 0),  # a poll speaks for no time at all
    (None, 4, 4),  # the midpoint 13:00 splits the day
])
def test_reach_at_the_edges_of_business_hours(reach_us, up, down):
    row = one_row(EDGE_POLLS, [(0, "09:00:00", "17:00:00")], "2023-01-24 00:00:00", reach_us=reach_us)
    # The Monday a week earlier ends exactly where the week window begins; the last hour is closed.
    expect_all(row, uptime_last_day=up, downtime_last_day=down, unknown_last_day=8 - up - down,
               uptime_last_week=up, downtime_last_week=down, unknown_last_week=8 - up - down)


def test_one_minute_reach_of_hourly_polls():
    # 24/7, hourly polls, now on the hour: the poll at now speaks 1 min back, the others 2 min each, the poll
    # at the window's start 1 min into it. Week: 1 + 167 * 2 + 1 = 336 min = 5.6 h.
    row = one_row(hourly("2023-01-10 00:00:00", "2023-01-25 12:00:00"), [], "2023-01-25 12:00:00",
                  reach_us=reference.MINUTE)
    expect_all(row, uptime_last_hour=2, unknown_last_hour=58, uptime_last_day=0.8, unknown_last_day=23.2,
               uptime_last_week=5.6, unknown_last_week=162.4)


def test_a_poll_at_now_speaks_backwards_only():
    row = one_row([("2023-01-25 12:00:00", "inactive")], [], "2023-01-25 12:00:00", reach_us=90 * reference.MINUTE)
    expect_all(row, downtime_last_hour=60, downtime_last_day=1.5, unknown_last_day=22.5,
               downtime_last_week=1.5, unknown_last_week=166.5)


# --- special hours, by hand -----------------------------------------------------------------------------

def test_rejected_special_rows_count_as_absent():
    special = [("2023-01-23", "", ""),  # valid: Monday closed
               ("2023-01-22", "", "10:00:00"),  # one time empty: rejected, Sunday keeps 09-17
               ("2023-01-21", "25:00:00", "26:00:00"),  # bad times: rejected
               ("2023-01-20", "12:60:00", "13:00:00"),
               ("2023-02-30", "", ""), ("2023-13-01", "", ""), ("not a date", "", "")]
    rows = reference.report([("s", t, status) for t, status in hourly("2023-01-10 00:00:00", "2023-01-24 00:00:00")],
                            [("s", *row) for row in EVERY_DAY_9_TO_5], {"s": "America/Chicago"},
                            us("2023-01-24 00:00:00"),
                            special=[("s", *row) for row in special]
                            + [("", "2023-01-19", "", ""), (None, "2023-01-18", "", "")])  # blank store ids
    # Week: Tuesday 17 to Sunday 22, six days of 8 h; Monday 23 closed; the day window holds only Monday.
    expect_all(rows[0], uptime_last_week=48)


def test_store_without_weekly_rows_is_open_all_day_on_dates_without_special_rows():
    special = [("2023-01-21", "", ""), ("2023-01-23", "12:00:00", "14:00:00")]
    row = one_row(hourly("2023-01-10 00:00:00", "2023-01-24 00:00:00"), [], "2023-01-24 00:00:00", special=special)
    # Week window: Monday 16 18:00 - Monday 23 18:00. Monday 16 6 h, Tuesday-Friday 96 h, Saturday closed,
    # Sunday 24 h, Monday 23 12:00-14:00. Day window: Sunday 18:00-24:00 and Monday 12:00-14:00.
    expect_all(row, uptime_last_day=8, uptime_last_week=128)


def test_overnight_special_row_runs_into_a_closed_date():
    special = [("2023-01-22", "20:00:00", "03:00:00"), ("2023-01-23", None, None)]
    row = one_row(hourly("2023-01-10 00:00:00", "2023-01-24 00:00:00"), EVERY_DAY_9_TO_5, "2023-01-24 00:00:00",
                  special=special)
    # Sunday 22's 09-17 is replaced by 20:00 - Monday 03:00, which the closed Monday does not cut.
    expect_all(row, uptime_last_day=7, uptime_last_week=5 * 8 + 7)


def test_special_rows_of_one_date_are_united_and_a_closed_row_adds_nothing():
    special = [("2023-01-23", "", ""), ("2023-01-23", "09:00:00", "10:00:00"),
               ("2023-01-23", "09:30:00", "11:00:00"), ("2023-01-23", "13:00:00", "14:00:00"),
               ("2023-01-23", "", "14:00:00")]  # rejected
    row = one_row(hourly("2023-01-10 00:00:00", "2023-01-24 00:00:00"), EVERY_DAY_9_TO_5, "2023-01-24 00:00:00",
                  special=special)
    expect_all(row, uptime_last_day=3, uptime_last_week=6 * 8 + 3)


def test_special_start_equal_end_is_24_hours_and_23_59_59_is_midnight():
    special = [("2023-01-23", "12:00:00", "12:00:00"), ("2023-01-24", "20:00:00", "23:59:59.5")]
    row = one_row(hourly("2023-01-10 00:00:00", "2023-01-25 12:00:00"), [(0, "09:00:00", "10:00:00")],
                  "2023-01-25 12:00:00", special=special)
    # Monday 12:00 - Tuesday 12:00 and Tuesday 20:00-24:00. Day window: Tuesday 06:00 - Wednesday 06:00.
    expect_all(row, uptime_last_day=6 + 4, uptime_last_week=24 + 4)


def test_special_rows_on_dst_change_dates():
    # Spring forward (as worked example 4, now from a special row): 01:00-05:00 is 3 hours. In both cases
    # the weekly Monday 09-10 of the week before lies inside the week window without evidence.
    row = one_row([("2023-03-12 08:30:00", "active")], [(0, "09:00:00", "10:00:00")], "2023-03-12 12:00:00",
                  special=[("2023-03-12", "01:00:00", "05:00:00")])
    expect_all(row, uptime_last_day=3, uptime_last_week=3, unknown_last_week=1)
    # Fall back: 00:00 - 23:59:59 of Sunday 2023-11-05 is 25 hours, 05:00 - 06:00 UTC the next day; the day
    # window (from 12:00 UTC) holds 18 of them.
    row = one_row([("2023-11-05 18:00:00", "inactive")], [(0, "09:00:00", "10:00:00")], "2023-11-06 12:00:00",
                  special=[("2023-11-05", "00:00:00", "23:59:59")], reach_us=None)
    expect_all(row, downtime_last_day=18, downtime_last_week=25, unknown_last_week=1)


@pytest.mark.parametrize("special, reach_us, expected", [
    ([], None, {"uptime_last_hour": 60, "uptime_last_day": 24, "uptime_last_week": 168}),
    # A closure between the old poll and the week: the window's interval has no evidence.
    ([("2023-02-01", "", "")], None, {"unknown_last_hour": 60, "unknown_last_day": 24, "unknown_last_week": 168}),
    # An opening of 2 h on that date closes the rest of it just the same.
    ([("2023-02-01", "10:00:00", "12:00:00")], None,
     {"unknown_last_hour": 60, "unknown_last_day": 24, "unknown_last_week": 168}),
    # A closure before the old poll changes nothing.
    ([("2022-12-01", "", "")], None, {"uptime_last_hour": 60, "uptime_last_day": 24, "uptime_last_week": 168}),
    # With the default reach the old poll never reaches the week anyway.
    ([], reference.DEFAULT_REACH_US, {"unknown_last_hour": 60, "unknown_last_day": 24, "unknown_last_week": 168}),
])
def test_24_7_store_with_a_poll_months_ago(special, reach_us, expected):
    row = one_row([("2023-01-01 12:00:00", "active")], [], "2023-05-01 12:00:00", special=special,
                  reach_us=reach_us)
    expect_all(row, **expected)


# --- reference internals --------------------------------------------------------------------------------

def test_reference_local_to_utc_rules():
    chicago = reference.ZoneInfo("America/Chicago")
    gap = reference.local_to_utc_us(datetime(2023, 3, 12, 2, 30), chicago)
    fold = reference.local_to_utc_us(datetime(2023, 11, 5, 1, 30), chicago)
    assert reference.from_us(gap) == datetime(2023, 3, 12, 8, 0, tzinfo=UTC)
    assert reference.from_us(fold) == datetime(2023, 11, 5, 6, 30, tzinfo=UTC)


def test_reference_reads_special_rows():
    read = reference.read_special_rows([
        ("s", "2023-01-23", "", ""), ("s", "2023-01-23", "22:00:00", "02:00:00"), ("s", "2023-01-24", "", None),
        ("s", "2023-02-29", "", ""), ("s", "2023-01-25", "24:00:00", "01:00:00"), ("s", "2023-01-26", None, "01:00:00"),
        ("", "2023-01-27", "", ""), ("t", "2024-02-29", "23:59:59", "23:59:59.999")])
    d = reference.date
    assert read == {"s": {d(2023, 1, 23): [None, (timedelta(hours=22), timedelta(hours=26))],
                          d(2023, 1, 24): [None]},
                    "t": {d(2024, 2, 29): [(timedelta(hours=23, minutes=59, seconds=59), timedelta(days=1))]}}
