"""Reach and special hours (docs/report-semantics.md), and polls on boundary instants: each rule with a
hand-computed expectation.

Times in comments are local America/Chicago (UTC-6 in winter) unless marked UTC.
"""
import pandas as pd
import pytest

from report_generator import ReportError, compute_report

CHICAGO = pd.DataFrame([("s", "America/Chicago")], columns=["store_id", "timezone_str"])
EVERY_DAY_9_TO_17 = [("s", day, "09:00:00", "17:00:00") for day in range(7)]


def run(poll_rows, hour_rows, now, special_rows=(), **options):
    """The extended row of store "s" (reach: the default unless given)."""
    frame = compute_report(
        pd.DataFrame(poll_rows, columns=["store_id", "timestamp_utc", "status"]),
        pd.DataFrame(hour_rows, columns=["store_id", "day_of_week", "start_time_local", "end_time_local"]),
        CHICAGO, now, extended=True,
        special_hours=pd.DataFrame(list(special_rows),
                                   columns=["store_id", "date", "start_time_local", "end_time_local"]),
        **options)
    assert list(frame["store_id"]) == ["s"], frame
    return frame.iloc[0].to_dict()


def expect(actual, **expected):
    assert {key: actual[key] for key in expected} == pytest.approx(expected, abs=1e-9), actual


def hourly(first, last, status="active"):
    return [("s", stamp, status) for stamp in pd.date_range(first, last, freq="h", tz="UTC")]


# --- reach --------------------------------------------------------------------------------------------

def test_worked_example_5_reach_bounds_a_stale_poll():
    polls = [("s", "2023-01-20 12:00:00", "active")]
    r = run(polls, [], "2023-01-25 12:00:00")  # default reach: 10:00-14:00 UTC on 2023-01-20
    expect(r, uptime_last_hour=0, downtime_last_hour=0, uptime_last_day=0, downtime_last_day=0,
           uptime_last_week=4, downtime_last_week=0, unknown_last_hour=60, unknown_last_day=24,
           unknown_last_week=164)
    r = run(polls, [], "2023-01-25 12:00:00", reach_minutes=None)
    expect(r, uptime_last_hour=60, uptime_last_day=24, uptime_last_week=168, unknown_last_week=0)


def test_reach_leaves_the_middle_of_a_long_gap_unknown():
    # 24/7; polls 10:00 UTC up and 16:00 UTC down; midpoint 13:00 UTC.
    polls = [("s", "2023-01-25 10:00:00", "active"), ("s", "2023-01-25 16:00:00", "inactive")]
    r = run(polls, [], "2023-01-25 18:00:00", reach_minutes=120)
    # 10:00 speaks for 08:00-12:00, 16:00 for 14:00-18:00 (now); 12:00-14:00 and before 08:00 unknown.
    expect(r, uptime_last_hour=0, downtime_last_hour=60, uptime_last_day=4, downtime_last_day=4,
           unknown_last_day=16, uptime_last_week=4, downtime_last_week=4, unknown_last_week=160)
    r = run(polls, [], "2023-01-25 18:00:00", reach_minutes=240)
    # Reach 4 h: the midpoint decides between the polls: 06:00-13:00 up, 13:00-18:00 down.
    expect(r, uptime_last_day=7, downtime_last_day=5, unknown_last_day=12)


def test_reach_is_clipped_by_the_business_interval_at_both_edges():
    # Monday 09:00-17:00 = 15:00-23:00 UTC. Polls 09:30 up, 16:00 down; reach 60 min.
    polls = [("s", "2023-01-23 15:30:00", "active"), ("s", "2023-01-23 22:00:00", "inactive")]
    r = run(polls, [("s", 0, "09:00:00", "17:00:00")], "2023-01-24 00:00:00", reach_minutes=60)
    # 15:30 speaks for 15:00 (opening, not 14:30) to 16:30; 22:00 for 21:00 to 23:00 (closing, not 23:00+).
    expect(r, uptime_last_day=1.5, downtime_last_day=2, unknown_last_day=4.5, uptime_last_hour=0,
           downtime_last_hour=0, unknown_last_hour=0)


def test_reach_one_minute_and_a_full_week():
    polls = [("s", "2023-01-25 10:00:00", "active")]
    # One minute on either side: 09:59-10:01 = 2 min = 0.0333 h, rounded 0.03; unknown 23.9667 -> 23.97.
    expect(run(polls, [], "2023-01-25 12:00:00", reach_minutes=1), uptime_last_day=0.03, unknown_last_day=23.97)
    expect(run(polls, [], "2023-01-25 12:00:00", reach_minutes=10080), uptime_last_day=24, uptime_last_week=168)


@pytest.mark.parametrize("reach", [0, -5, 10081, 1.5, "60"])
def test_reach_out_of_range_is_a_clear_error(reach):
    with pytest.raises(ReportError, match="reach_minutes"):
        run([("s", "2023-01-25 10:00:00", "active")], [], None, reach_minutes=reach)


# --- polls on boundary instants -----------------------------------------------------------------------

def test_poll_exactly_at_opening_is_evidence_and_exactly_at_closing_is_not():
    # Monday 09:00-12:00 = 15:00-18:00 UTC. A poll at 18:00 UTC lies outside [15:00, 18:00).
    polls = [("s", "2023-01-23 15:00:00", "active"), ("s", "2023-01-23 18:00:00", "inactive")]
    r = run(polls, [("s", 0, "09:00:00", "12:00:00")], "2023-01-23 20:00:00", reach_minutes=None)
    expect(r, uptime_last_day=3, downtime_last_day=0, unknown_last_day=0)
    r = run(polls, [("s", 0, "09:00:00", "12:00:00")], "2023-01-23 20:00:00", reach_minutes=60)
    expect(r, uptime_last_day=1, downtime_last_day=0, unknown_last_day=2)


def test_the_midpoint_belongs_to_the_later_poll_and_a_poll_at_now_counts():
    # 09:00-12:00 = 15:00-18:00 UTC; polls 15:00 up, 17:00 down (= now); midpoint 16:00 UTC.
    polls = [("s", "2023-01-23 15:00:00", "active"), ("s", "2023-01-23 17:00:00", "inactive")]
    r = run(polls, [("s", 0, "09:00:00", "12:00:00")], "2023-01-23 17:00:00", reach_minutes=None)
    # Last hour [16:00, 17:00): from the midpoint on, all down; the day stops at now.
    expect(r, uptime_last_hour=0, downtime_last_hour=60, uptime_last_day=1, downtime_last_day=1,
           unknown_last_day=0)
    # A poll one microsecond after now is ignored: the 15:00 poll then holds to now.
    polls[1] = ("s", "2023-01-23 17:00:00.000001", "inactive")
    r = run(polls, [("s", 0, "09:00:00", "12:00:00")], "2023-01-23 17:00:00", reach_minutes=None)
    expect(r, uptime_last_hour=60, downtime_last_hour=0, uptime_last_day=2, downtime_last_day=0)


def test_window_start_on_a_midpoint_and_on_a_poll():
    # 24/7; polls 10:00 up, 12:00 down, now 14:00: the last hour [13:00, 14:00) is all the 12:00 poll's;
    # with now 13:00 the last hour [12:00, 13:00) starts on the poll itself, whose segment began at 11:00.
    polls = [("s", "2023-01-25 10:00:00", "active"), ("s", "2023-01-25 12:00:00", "inactive")]
    expect(run(polls, [], "2023-01-25 14:00:00"), downtime_last_hour=60, uptime_last_day=3,
           downtime_last_day=3)  # reach 120: 08:00-11:00 up, 11:00-14:00 down
    expect(run(polls[:1] + [("s", "2023-01-25 11:00:00", "inactive")], [], "2023-01-25 11:30:00"),
           uptime_last_hour=0, downtime_last_hour=60)  # midpoint 10:30 = window start: [10:30, 11:30) down


# --- special hours ------------------------------------------------------------------------------------

def test_worked_example_6_special_hours():
    polls = hourly("2023-01-17 00:00", "2023-01-25 00:00")
    special = [("s", "2023-01-24", None, None), ("s", "2023-01-23", "12:00:00", "14:00:00")]
    r = run(polls, EVERY_DAY_9_TO_17, "2023-01-25 00:00:00", special)
    # Last day (Monday 18:00 -> Tuesday 18:00): Tuesday is closed, Monday's 12-14 is before it.
    expect(r, uptime_last_day=0, downtime_last_day=0, unknown_last_day=0)
    # Last week: Wednesday 18th to Sunday 22nd, five days of 8 h, plus Monday's special 2 h.
    expect(r, uptime_last_week=42, downtime_last_week=0, unknown_last_week=0)
    # Without the special rows: Tuesday 09:00-17:00 is in the last day, and the week has 7 x 8 h... minus
    # Tuesday the 17th's hours, which end (23:00 UTC) before the window starts (2023-01-18 00:00 UTC).
    r = run(polls, EVERY_DAY_9_TO_17, "2023-01-25 00:00:00")
    expect(r, uptime_last_day=8, uptime_last_week=56)


def test_closed_special_date_given_as_empty_text():
    polls = hourly("2023-01-24 00:00", "2023-01-25 00:00")
    r = run(polls, EVERY_DAY_9_TO_17, "2023-01-25 00:00:00", [("s", "2023-01-24", "", " ")])
    expect(r, uptime_last_day=0, downtime_last_day=0, unknown_last_day=0)


def test_special_overnight_row_runs_into_the_next_date():
    # Open Monday-Friday 09-17 only. Special Saturday 2023-01-21 20:00 -> 02:00 (= 02:00-08:00 UTC on the
    # 22nd); Sunday the 22nd has no rows, but the night that began on Saturday still runs into it.
    polls = [("s", "2023-01-22 03:00:00", "active"), ("s", "2023-01-22 07:00:00", "inactive")]
    weekdays = [("s", day, "09:00:00", "17:00:00") for day in range(5)]
    for reach in (None, 120):
        r = run(polls, weekdays, "2023-01-22 12:00:00", [("s", "2023-01-21", "20:00:00", "02:00:00")],
                reach_minutes=reach)
        expect(r, uptime_last_day=3, downtime_last_day=3, unknown_last_day=0)  # midpoint 05:00 UTC


def test_overnight_weekly_row_of_the_day_before_still_runs_into_a_special_date():
    # Every day 22:00 -> 02:00; 2023-01-24 closed. Monday night's 22:00-02:00 (04:00-08:00 UTC on the
    # 24th) started on the 23rd and keeps its hours; Tuesday night's does not happen.
    rows = [("s", day, "22:00:00", "02:00:00") for day in range(7)]
    polls = hourly("2023-01-23 00:00", "2023-01-25 12:00")
    r = run(polls, rows, "2023-01-25 12:00:00", [("s", "2023-01-24", None, None)])
    # Last day [01-24 12:00, 01-25 12:00 UTC): Tuesday night (04:00-08:00 UTC on the 25th) is closed.
    expect(r, uptime_last_day=0, unknown_last_day=0)
    r = run(polls, rows, "2023-01-24 12:00:00", [("s", "2023-01-24", None, None)])
    # Last day [01-23 12:00, 01-24 12:00 UTC) holds Monday night, 04:00-08:00 UTC on the 24th.
    expect(r, uptime_last_day=4, unknown_last_day=0)


@pytest.mark.parametrize("special, polls, now, up", [
    # Spring forward (Sunday 2023-03-12): 01:00 CST = 07:00 UTC, 05:00 CDT = 10:00 UTC: 3 hours.
    ([("s", "2023-03-12", "01:00:00", "05:00:00")], [("s", "2023-03-12 08:30:00", "active")],
     "2023-03-12 12:00:00", 3),
    # Fall back (Sunday 2023-11-05): 00:00 CDT = 05:00 UTC, 03:00 CST = 09:00 UTC: 4 hours.
    ([("s", "2023-11-05", "00:00:00", "03:00:00")], [("s", "2023-11-05 06:00:00", "active")],
     "2023-11-05 12:00:00", 4),
    # A start in the spring-forward gap (02:30 does not exist) becomes the transition, 08:00 UTC.
    ([("s", "2023-03-12", "02:30:00", "04:00:00")], [("s", "2023-03-12 08:30:00", "active")],
     "2023-03-12 12:00:00", 1),
])
def test_special_hours_on_dst_dates(special, polls, now, up):
    r = run(polls, [("s", 0, "09:00:00", "17:00:00")], now, special, reach_minutes=None)
    expect(r, uptime_last_day=up, unknown_last_day=0)


@pytest.mark.parametrize("special, business_hours", [
    ([("s", "2023-01-24", "09:00:00", "10:00:00"), ("s", "2023-01-24", "15:00:00", "16:00:00")], 2),
    ([("s", "2023-01-24", "09:00:00", "12:00:00"), ("s", "2023-01-24", "11:00:00", "13:00:00")], 4),
    ([("s", "2023-01-24", "06:00:00", "06:00:00")], 18),   # start == end: 24 h from 06:00, 18 h of it by now
    ([("s", "2023-01-24", "20:00:00", "23:59:59")], 4),    # 23:59:59 is midnight: 20:00-24:00
    ([("s", "2023-01-24", "20:00:00", "23:59:59.5")], 4),
    ([("s", "2023-01-24", "08:00:00", "17:00:00"), ("s", "2023-01-24", None, None)], 9),  # closed adds nothing
])
def test_several_special_rows_on_one_date_and_24_hour_and_midnight_rows(special, business_hours):
    polls = hourly("2023-01-23 00:00", "2023-01-25 06:00")
    # Last day: Tuesday 2023-01-24 00:00 -> Wednesday 00:00 local (06:00 -> 06:00 UTC).
    r = run(polls, EVERY_DAY_9_TO_17, "2023-01-25 06:00:00", special)
    expect(r, uptime_last_day=business_hours, downtime_last_day=0, unknown_last_day=0)


def test_store_without_weekly_rows_is_open_all_day_except_on_special_dates():
    # Special Tuesday 2023-01-24 10:00-12:00 (16:00-18:00 UTC); otherwise open all day.
    polls = [("s", "2023-01-23 17:00:00", "inactive"), ("s", "2023-01-24 17:00:00", "active")]
    special = [("s", "2023-01-24", "10:00:00", "12:00:00")]
    now = "2023-01-25 06:00:00"  # Wednesday 00:00 local
    r = run(polls, [], now, special, reach_minutes=None)
    # Last day: Tuesday 00:00 -> Wednesday 00:00 local holds only 10:00-12:00, all up.
    expect(r, uptime_last_day=2, downtime_last_day=0, unknown_last_day=0)
    # Last week: 144 h open until Tuesday 00:00 local, told by Monday's poll alone (down), plus 2 h up.
    expect(r, uptime_last_week=2, downtime_last_week=144, unknown_last_week=0)
    r = run(polls, [], now, special, reach_minutes=120)
    expect(r, uptime_last_week=2, downtime_last_week=4, unknown_last_week=140)


@pytest.mark.parametrize("bad_row", [
    ("s", "2023-02-30", None, None),            # no such date
    ("s", "2023-1-24", None, None),             # not YYYY-MM-DD
    ("s", "24/01/2023", None, None),
    ("s", "2023-01-24", "25:00:00", "17:00:00"),  # bad time
    ("s", "2023-01-24", "09:00:00", None),        # one time empty
    ("s", "2023-01-24", "", "12:00:00"),
    ("", "2023-01-24", None, None),               # no store
])
def test_rejected_special_rows_count_as_absent(bad_row):
    polls = hourly("2023-01-24 00:00", "2023-01-25 00:00")
    r = run(polls, EVERY_DAY_9_TO_17, "2023-01-25 00:00:00", [bad_row])
    expect(r, uptime_last_day=8, unknown_last_day=0)


def test_unbounded_reach_an_old_special_closure_cuts_off_an_older_poll():
    # Open 24/7; one poll, months before the week. Unbounded reach lets it speak for the week, unless a
    # special closed date lies between it and the week.
    polls = [("s", "2022-11-01 12:00:00", "active")]
    now = "2023-01-25 12:00:00"
    expect(run(polls, [], now, reach_minutes=None), uptime_last_week=168)
    expect(run(polls, [], now, [("s", "2023-01-01", None, None)], reach_minutes=None),
           uptime_last_week=0, unknown_last_week=168)
    # A closure before the poll changes nothing; nor does a special date with the usual hours.
    expect(run(polls, [], now, [("s", "2022-06-01", None, None)], reach_minutes=None), uptime_last_week=168)
    expect(run(polls, [], now, [("s", "2023-01-01", "00:00:00", "23:59:59")], reach_minutes=None),
           uptime_last_week=168)
    # With a weekly schedule open all week (the same as 24/7) the closure cuts it off too.
    all_week = [("s", day, "00:00:00", "23:59:59") for day in range(7)]
    expect(run(polls, all_week, now, [("s", "2023-01-01", None, None)], reach_minutes=None),
           uptime_last_week=0, unknown_last_week=168)


def test_special_rows_of_other_stores_and_dates_change_nothing():
    polls = hourly("2023-01-24 00:00", "2023-01-25 00:00")
    special = [("t", "2023-01-24", None, None), ("s", "2023-01-30", None, None), ("s", "2022-01-24", None, None)]
    expect(run(polls, EVERY_DAY_9_TO_17, "2023-01-25 00:00:00", special), uptime_last_day=8)


def test_stale_stores_are_counted_in_the_metadata():
    frame = compute_report(
        pd.DataFrame([("s", "2023-01-25 10:00:00", "active"), ("t", "2023-01-01 10:00:00", "active")],
                     columns=["store_id", "timestamp_utc", "status"]),
        pd.DataFrame(columns=["store_id", "day_of_week", "start_time_local", "end_time_local"]),
        CHICAGO, "2023-01-25 12:00:00")
    assert frame.attrs["stores_without_polls_this_week"] == 1
    assert frame.attrs["reach_minutes"] == 120


def test_unbounded_reach_a_weekly_closure_lost_in_a_dst_gap_and_special_sundays_keep_a_store_open():
    # Open all week but Sunday 02:00-03:00, the hour the spring-forward gap removes on 2023-03-12; special
    # all-day Sundays from 2023-03-19 and a special Friday 2023-03-17 cover the later closures. So from
    # Sunday 2023-03-05 03:00 the store never closes, and a poll on Monday 2023-03-06 speaks until now.
    rows = ([("s", day, "00:00:00", "23:59:59") for day in range(6)]
            + [("s", 6, "00:00:00", "02:00:00"), ("s", 6, "03:00:00", "23:59:59")])
    special = [("s", str(pd.Timestamp("2023-03-19") + pd.Timedelta(weeks=k))[:10], "00:00:00", "23:59:59")
               for k in range(6)] + [("s", "2023-03-17", "00:00:00", "23:59:59")]
    r = run([("s", "2023-03-06 18:00:00", "active")], rows, "2023-04-10 12:00:00", special, reach_minutes=None)
    expect(r, uptime_last_hour=60, uptime_last_day=24, uptime_last_week=168, unknown_last_week=0)
    # Without the special Sundays the closure of 2023-03-19 02:00-03:00 cuts the poll off (and the week
    # holds one closed hour, Sunday 2023-04-09 02:00-03:00).
    r = run([("s", "2023-03-06 18:00:00", "active")], rows, "2023-04-10 12:00:00", special[-1:], reach_minutes=None)
    expect(r, uptime_last_week=0, unknown_last_week=167)


def test_unbounded_reach_an_older_poll_does_not_merge_with_a_poll_at_the_engines_horizon():
    # The engine moves a store's last poll from before its horizon (a UTC midnight 19 days before the
    # week) onto the horizon; a real poll exactly there must keep its own status. Store "s" is open 24/7;
    # its poll at 2022-12-30 00:00 UTC (active) is the latest and speaks for the whole week.
    polls = [("s", "2022-12-29 23:00:00", "inactive"), ("s", "2022-12-30 00:00:00", "active"),
             ("t", "2023-01-25 12:00:00", "active")]
    frame = compute_report(pd.DataFrame(polls, columns=["store_id", "timestamp_utc", "status"]),
                           pd.DataFrame(columns=["store_id", "day_of_week", "start_time_local", "end_time_local"]),
                           CHICAGO, "2023-01-25 12:00:00", reach_minutes=None, extended=True)
    expect(frame.set_index("store_id").loc["s"].to_dict(), uptime_last_hour=60, uptime_last_day=24,
           uptime_last_week=168, downtime_last_week=0)
