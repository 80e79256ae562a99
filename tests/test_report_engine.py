"""The engine against docs/report-semantics.md: every rule with a hand-computed expectation.

Times in comments are local (America/Chicago is UTC-6 in winter, UTC-5 in summer) unless marked UTC.
These rules hold for any reach; the expectations are computed with unbounded reach (the classic nearest
poll), so a poll's status holds to the ends of its interval. Reach and special hours have their own
tests in test_report_reach_and_special_hours.py.
"""
import pandas as pd
import pytest

from report_generator import EXTENDED_COLUMNS, STANDARD_COLUMNS, ReportError, compute_report


def classic_report(*args, **options):
    """compute_report with unbounded reach unless a test says otherwise."""
    options.setdefault("reach_minutes", None)
    return compute_report(*args, **options)


def polls(*rows):
    return pd.DataFrame(list(rows), columns=["store_id", "timestamp_utc", "status"])


def hours(*rows):
    return pd.DataFrame(list(rows), columns=["store_id", "day_of_week", "start_time_local", "end_time_local"])


def zones(*rows):
    return pd.DataFrame(list(rows), columns=["store_id", "timezone_str"])


CHICAGO = zones(("s", "America/Chicago"))


def row(frame, store=None):
    found = frame if store is None else frame[frame["store_id"] == store]
    assert len(found) == 1, frame
    return found.iloc[0].to_dict()


def report_row(poll_rows, hour_rows, now, tz=CHICAGO, **options):
    return row(classic_report(polls(*poll_rows), hours(*hour_rows), tz, now, extended=True, **options))


def expect(actual, **expected):
    assert {key: actual[key] for key in expected} == pytest.approx(expected, abs=1e-9), actual


# --- the four worked examples, verbatim ---------------------------------------------------------------

def test_worked_example_1_monday_morning():
    r = report_row([("s", "2023-01-23 16:14:00", "active"), ("s", "2023-01-23 17:15:00", "inactive")],
                   [("s", 0, "09:00:00", "12:00:00")], "2023-01-23 18:00:00")
    expect(r, uptime_last_hour=0, downtime_last_hour=60, uptime_last_day=1.74, downtime_last_day=1.26,
           uptime_last_week=1.74, downtime_last_week=1.26)
    # The Monday a week earlier (2023-01-16) has no polls: unknown, but it lies before the week window
    # [2023-01-16 18:00 UTC, ...), which starts as that Monday's business hours end.
    expect(r, unknown_last_week=0)


def test_worked_example_2_overnight_friday():
    r = report_row([("s", "2023-01-28 05:00:00", "active"), ("s", "2023-01-28 07:00:00", "inactive")],
                   [("s", 4, "22:00:00", "02:00:00")], "2023-01-28 08:30:00")
    expect(r, uptime_last_hour=0, downtime_last_hour=30, uptime_last_day=2, downtime_last_day=2)


def test_worked_example_3_no_business_hours_is_24_7():
    poll_rows = [("s", "2023-01-28 10:00:00", "active"), ("s", "2023-01-28 11:00:00", "inactive")]
    # Default reach (120 min): the first poll speaks back to 08:00 UTC; the rest is unknown.
    r = report_row(poll_rows, [], "2023-01-28 11:30:00", reach_minutes=120)
    expect(r, uptime_last_hour=0, downtime_last_hour=60, uptime_last_day=2.5, downtime_last_day=1,
           uptime_last_week=2.5, downtime_last_week=1, unknown_last_day=20.5, unknown_last_week=164.5)
    r = row(compute_report(polls(*poll_rows), hours(), CHICAGO, "2023-01-28 11:30:00", extended=True))
    expect(r, uptime_last_day=2.5, downtime_last_day=1, unknown_last_day=20.5)  # 120 is the default
    # Unbounded: the first poll's status holds back to the start of each window.
    r = report_row(poll_rows, [], "2023-01-28 11:30:00")
    expect(r, uptime_last_hour=0, downtime_last_hour=60, uptime_last_day=23, downtime_last_day=1,
           uptime_last_week=167, downtime_last_week=1, unknown_last_week=0)


def test_worked_example_4_spring_forward_interval_is_three_hours():
    r = report_row([("s", "2023-03-12 08:30:00", "active")], [("s", 6, "01:00:00", "05:00:00")],
                   "2023-03-12 12:00:00")
    expect(r, uptime_last_day=3, uptime_last_week=3, downtime_last_week=0, unknown_last_week=0)


# --- interpolation ------------------------------------------------------------------------------------

def test_polls_outside_business_hours_are_never_evidence():
    # Example 1 plus polls at 08:00 and 13:00 local, outside 09:00-12:00: nothing changes.
    r = report_row([("s", "2023-01-23 14:00:00", "inactive"), ("s", "2023-01-23 16:14:00", "active"),
                    ("s", "2023-01-23 17:15:00", "inactive"), ("s", "2023-01-23 19:00:00", "active")],
                   [("s", 0, "09:00:00", "12:00:00")], "2023-01-23 19:00:00")
    expect(r, uptime_last_day=1.74, downtime_last_day=1.26, uptime_last_hour=0, downtime_last_hour=0)


def test_evidence_outside_the_window_still_decides_inside_it():
    # Only poll at 09:10, active; the last hour 11:00-12:00 takes its status.
    r = report_row([("s", "2023-01-23 15:10:00", "active")], [("s", 0, "09:00:00", "12:00:00")],
                   "2023-01-23 18:00:00")
    expect(r, uptime_last_hour=60, uptime_last_day=3, downtime_last_day=0)


def test_interval_without_polls_is_unknown():
    # Monday 09-12 has polls, Tuesday 09-12 none; now Tuesday 13:00 local.
    r = report_row([("s", "2023-01-23 16:00:00", "inactive")],
                   [("s", 0, "09:00:00", "12:00:00"), ("s", 1, "09:00:00", "12:00:00")], "2023-01-24 19:00:00")
    expect(r, downtime_last_day=0, unknown_last_day=3, downtime_last_week=3, unknown_last_week=3,
           uptime_last_week=0)


def test_status_never_holds_past_now():
    # 24/7, one poll at 10:00 UTC active, now 10:20 UTC: the last hour has 60 minutes of business time,
    # all of it active (the poll's status holds back to the start of the window and up to now).
    r = report_row([("s", "2023-01-28 10:00:00", "active")], [], "2023-01-28 10:20:00")
    expect(r, uptime_last_hour=60, uptime_last_day=24, uptime_last_week=168)


def test_old_poll_of_an_always_open_store_holds_through_the_week():
    # The only poll is 30 days before now; the store is open 24/7, so nearest-poll gives it all.
    r = report_row([("s", "2022-12-29 10:00:00", "inactive")], [], "2023-01-28 10:00:00")
    expect(r, downtime_last_hour=60, downtime_last_day=24, downtime_last_week=168, uptime_last_week=0)


def test_old_poll_of_a_store_open_every_hour_of_the_week_holds_through_the_week():
    # Open 00:00-23:59:59 every day: business intervals touch and merge into one, as for 24/7.
    schedule = [("s", day, "00:00:00", "23:59:59") for day in range(7)]
    r = report_row([("s", "2022-12-29 10:00:00", "inactive")], schedule, "2023-01-28 10:00:00")
    expect(r, downtime_last_day=24, downtime_last_week=168, unknown_last_week=0)


def test_midpoint_splits_between_polls_and_first_poll_holds_back_to_open():
    # 24/7 store: the first poll holds back to the window start (example 3's rule, on the hour).
    r = report_row([("s", "2023-01-28 10:40:00", "inactive"), ("s", "2023-01-28 11:00:00", "active")],
                   [], "2023-01-28 11:00:00")
    # Last hour 10:00-11:00 UTC: inactive until the midpoint 10:50, then active.
    expect(r, downtime_last_hour=50, uptime_last_hour=10)


# --- business hours --------------------------------------------------------------------------------

def test_overnight_row_continues_into_the_next_local_day():
    # Monday 22:00 -> Tuesday 02:00 local = Tue 04:00-08:00 UTC; one poll at Tue 07:00 UTC inactive.
    r = report_row([("s", "2023-01-24 07:00:00", "inactive")], [("s", 0, "22:00:00", "02:00:00")],
                   "2023-01-24 09:00:00")
    expect(r, downtime_last_day=4, downtime_last_hour=0, unknown_last_week=0)


def test_start_equal_to_end_is_open_24_hours():
    # Monday 10:00 -> Tuesday 10:00 local = Mon 16:00 UTC - Tue 16:00 UTC; poll Mon 20:00 UTC active.
    r = report_row([("s", "2023-01-23 20:00:00", "active")], [("s", 0, "10:00:00", "10:00:00")],
                   "2023-01-24 18:00:00")
    expect(r, uptime_last_week=24, uptime_last_day=22, uptime_last_hour=0)


@pytest.mark.parametrize("end", ["23:59:59", "23:59:59.999999", "23:59:59.5"])
def test_end_of_23_59_59_means_midnight_and_touches_the_next_day(end):
    # Monday all day plus Tuesday 00:00-01:00 form one interval of 25 hours; one poll on Monday decides it.
    r = report_row([("s", "2023-01-23 18:00:00", "inactive")],
                   [("s", 0, "00:00:00", end), ("s", 1, "00:00:00", "01:00:00")], "2023-01-24 12:00:00")
    expect(r, downtime_last_week=25, unknown_last_week=0, uptime_last_week=0)


def test_split_and_overlapping_rows_are_merged():
    # Monday 09-12 and 11-14 merge into 09-14; 16-18 is separate (and has no polls: unknown).
    # Polls 10:00 active and 13:00 inactive: midpoint 11:30.
    r = report_row([("s", "2023-01-23 16:00:00", "active"), ("s", "2023-01-23 19:00:00", "inactive")],
                   [("s", 0, "09:00:00", "12:00:00"), ("s", 0, "11:00:00", "14:00:00"),
                    ("s", 0, "16:00:00", "18:00:00")], "2023-01-24 06:00:00")
    expect(r, uptime_last_day=2.5, downtime_last_day=2.5, unknown_last_day=2)


def test_days_without_rows_are_closed():
    # Hours on Monday only: a Tuesday poll is outside business hours and Tuesday adds no business time.
    r = report_row([("s", "2023-01-23 16:00:00", "active"), ("s", "2023-01-24 16:00:00", "inactive")],
                   [("s", 0, "09:00:00", "12:00:00")], "2023-01-24 18:00:00")
    expect(r, uptime_last_week=3, downtime_last_week=0, uptime_last_day=0, unknown_last_day=0)


def test_store_whose_rows_are_all_unreadable_is_open_24_7():
    r = report_row([("s", "2023-01-28 10:00:00", "active")], [("s", 9, "09:00:00", "12:00:00")],
                   "2023-01-28 11:00:00")
    expect(r, uptime_last_day=24)


# --- time zones and DST ---------------------------------------------------------------------------------

def test_missing_timezone_uses_default_and_default_is_configurable():
    poll_rows = [("s", "2023-01-23 16:00:00", "active")]  # 10:00 Chicago, 11:00 New York
    schedule = [("s", 0, "09:00:00", "10:30:00")]
    chicago = report_row(poll_rows, schedule, "2023-01-23 18:00:00", tz=zones())
    expect(chicago, uptime_last_week=1.5)
    new_york = report_row(poll_rows, schedule, "2023-01-23 18:00:00", tz=zones(("s", "  ")),
                          default_timezone="America/New_York")
    expect(new_york, uptime_last_week=0, unknown_last_week=1.5)  # 14:00-15:30 UTC: the poll is after


def test_unknown_timezone_falls_back_to_default_and_is_counted():
    frame = classic_report(polls(("s", "2023-01-23 16:00:00", "active"), ("t", "2023-01-23 16:00:00", "active")),
                           hours(("s", 0, "09:00:00", "10:30:00")),
                           zones(("s", "Mars/Olympus_Mons"), ("t", " America/New_York ")), "2023-01-23 18:00:00")
    expect(row(frame, "s"), uptime_last_week=1.5)
    assert frame.attrs["stores_with_unknown_timezone"] == 1
    assert frame.attrs["stores_without_timezone"] == 0


def test_spring_forward_gap_start_becomes_the_transition_instant():
    # Sunday 2023-03-12 02:30-04:00 Chicago: 02:30 does not exist -> 08:00 UTC; 04:00 CDT = 09:00 UTC.
    r = report_row([("s", "2023-03-12 08:30:00", "active")], [("s", 6, "02:30:00", "04:00:00")],
                   "2023-03-12 12:00:00")
    expect(r, uptime_last_day=1)


def test_fall_back_ambiguous_start_takes_the_earlier_instant():
    # Sunday 2023-11-05 01:30-03:00 Chicago: 01:30 CDT = 06:30 UTC (earlier reading), 03:00 CST = 09:00 UTC.
    r = report_row([("s", "2023-11-05 07:00:00", "active")], [("s", 6, "01:30:00", "03:00:00")],
                   "2023-11-05 12:00:00")
    expect(r, uptime_last_day=2.5)


def test_overnight_across_fall_back_is_five_hours():
    # Saturday 22:00 CDT (Sun 03:00 UTC) -> Sunday 02:00 CST (08:00 UTC).
    r = report_row([("s", "2023-11-05 04:00:00", "inactive")], [("s", 5, "22:00:00", "02:00:00")],
                   "2023-11-05 12:00:00")
    expect(r, downtime_last_day=5)


@pytest.mark.parametrize("now, week_hours", [
    ("2023-03-13 12:00:00", 47),  # spring-forward weekend: Sat 00:00 - Mon 00:00 local is 47 h
    ("2023-11-06 12:00:00", 49),  # fall-back weekend: 49 h
    ("2023-01-23 12:00:00", 48),
])
def test_dst_weeks_weekend_store(now, week_hours):
    # Open all Saturday and Sunday; one active poll every UTC hour of the week before now.
    stamps = pd.date_range(end=now, periods=24 * 8, freq="h")
    poll_rows = [("s", str(t), "active") for t in stamps]
    r = report_row(poll_rows, [("s", 5, "00:00:00", "23:59:59"), ("s", 6, "00:00:00", "23:59:59")], now)
    expect(r, uptime_last_week=week_hours, downtime_last_week=0, unknown_last_week=0)


@pytest.mark.parametrize("now", ["2023-03-15 00:00:00", "2023-11-08 00:00:00"])
def test_dst_weeks_daily_business_hours_keep_eight_hours_a_day(now):
    # Open 09:00-17:00 every day through a DST change: 7 x 8 h = 56 h, all active.
    stamps = pd.date_range(end=now, periods=24 * 8, freq="h")
    poll_rows = [("s", str(t), "active") for t in stamps]
    r = report_row(poll_rows, [("s", d, "09:00:00", "17:00:00") for d in range(7)], now)
    expect(r, uptime_last_week=56, unknown_last_week=0)


def test_phoenix_has_no_dst():
    # Phoenix stays UTC-7 on 2023-03-12: 01:00-05:00 = 08:00-12:00 UTC, four full hours.
    r = report_row([("s", "2023-03-12 09:00:00", "active")], [("s", 6, "01:00:00", "05:00:00")],
                   "2023-03-12 13:00:00", tz=zones(("s", "America/Phoenix")))
    expect(r, uptime_last_day=4, uptime_last_hour=0)


# --- reference time, duplicates, output ------------------------------------------------------------------

def test_as_of_ignores_later_polls():
    poll_rows = [("s", "2023-01-28 10:00:00", "active"), ("s", "2023-01-28 11:00:00", "inactive"),
                 ("s", "2023-01-28 12:00:00", "active"), ("late", "2023-01-28 12:00:00", "active")]
    frame = classic_report(polls(*poll_rows), hours(), zones(), "2023-01-28 11:30:00")
    assert list(frame["store_id"]) == ["s"]  # "late" has no poll at or before now
    expect(row(frame), uptime_last_hour=0, downtime_last_hour=60, uptime_last_day=23, downtime_last_day=1)
    assert frame.attrs["now"] == pd.Timestamp("2023-01-28 11:30:00", tz="UTC")


def test_now_defaults_to_latest_poll():
    frame = classic_report(polls(("s", "2023-01-28 10:00:00", "active"), ("t", "2023-01-28 11:00:00Z", "active")),
                           hours(), zones())
    assert frame.attrs["now"] == pd.Timestamp("2023-01-28 11:00:00", tz="UTC")


def test_same_instant_twice_counts_once_and_inactive_wins():
    same = [("s", "2023-01-28 10:00:00", "active"), ("s", "2023-01-28 10:00:00", "inactive"),
            ("t", "2023-01-28 10:00:00", "active"), ("t", "2023-01-28 10:00:00", "active"),
            ("t", "2023-01-28 10:30:00", "inactive")]
    frame = classic_report(polls(*same), hours(), zones(), "2023-01-28 11:00:00")
    expect(row(frame, "s"), downtime_last_hour=60, uptime_last_hour=0)
    # A counted-twice active poll would change nothing anyway; the midpoint with 10:30 is 10:15.
    expect(row(frame, "t"), uptime_last_hour=15, downtime_last_hour=45)


def test_rows_sorted_by_store_id_as_text_and_ids_kept_verbatim():
    ids = ["9", "10", "0123", "-5", "a-uuid"]
    frame = classic_report(polls(*[(i, "2023-01-28 10:00:00", "active") for i in ids]), hours(), zones())
    assert list(frame["store_id"]) == sorted(ids) == ["-5", "0123", "10", "9", "a-uuid"]
    assert list(frame.columns) == STANDARD_COLUMNS


def test_rounding_is_to_two_decimals_half_up():
    # 24/7: inactive at 11:45, active at 12:00 = now -> active for the last 7.5 minutes = 0.125 h.
    r = report_row([("s", "2023-01-28 11:45:00", "inactive"), ("s", "2023-01-28 12:00:00", "active")],
                   [], "2023-01-28 12:00:00")
    expect(r, uptime_last_hour=7.5, uptime_last_day=0.13, downtime_last_day=23.88)


def test_units_are_minutes_for_the_hour_and_hours_for_day_and_week():
    r = report_row([("s", "2023-01-28 12:00:00", "inactive")], [], "2023-01-28 12:00:00")
    expect(r, downtime_last_hour=60, downtime_last_day=24, downtime_last_week=168)


def test_store_ids_option_restricts_and_extended_adds_unknown_columns():
    poll_rows = [(i, "2023-01-28 10:00:00", "active") for i in ("a", "b", "c")]
    frame = classic_report(polls(*poll_rows), hours(), zones(), store_ids=["c", "a", "zzz"], extended=True)
    assert list(frame["store_id"]) == ["a", "c"]
    assert list(frame.columns) == EXTENDED_COLUMNS


def test_categorical_and_datetime_inputs_are_accepted():
    frame = polls(("s", "2023-01-28 10:00:00", "active"), ("s", "2023-01-28 11:00:00", "inactive"))
    frame = frame.astype({"store_id": "category", "status": "category"})
    frame["timestamp_utc"] = pd.to_datetime(frame["timestamp_utc"], utc=True)
    expect(row(classic_report(frame, hours(), zones())), uptime_last_day=23.5, downtime_last_day=0.5)


def test_no_polls_is_a_clear_error_and_empty_as_of_is_an_empty_report():
    with pytest.raises(ReportError, match="no polls"):
        classic_report(polls(), hours(), zones())
    empty = classic_report(polls(("s", "2023-01-28 10:00:00", "active")), hours(), zones(), "2023-01-01")
    assert len(empty) == 0 and list(empty.columns) == STANDARD_COLUMNS


def test_readme_worked_example_overnight_fall_back_and_unknown():
    # The README's example: New York, Saturday 18:00-02:00 across the 2023 fall-back night (9 hours),
    # Sunday 11:00-15:00 without polls (unknown).
    poll_rows = [("S", "2023-11-04 23:00:00", "active"), ("S", "2023-11-05 03:30:00", "inactive"),
                 ("S", "2023-11-05 06:00:00", "active")]
    hour_rows = [("S", 5, "18:00:00", "02:00:00"), ("S", 6, "11:00:00", "15:00:00")]
    new_york = zones(("S", "America/New_York"))
    r = report_row(poll_rows, hour_rows, "2023-11-05 21:00:00", tz=new_york)
    expect(r, uptime_last_hour=0, downtime_last_hour=0, unknown_last_hour=0,
           uptime_last_day=5.5, downtime_last_day=3.5, unknown_last_day=4,
           uptime_last_week=5.5, downtime_last_week=3.5, unknown_last_week=4)
    # Default reach: 23:00 speaks until 01:00 UTC, 03:30 from 01:30; 00:30 more is unknown.
    r = report_row(poll_rows, hour_rows, "2023-11-05 21:00:00", tz=new_york, reach_minutes=120)
    expect(r, uptime_last_day=5.25, downtime_last_day=3.25, unknown_last_day=4.5)


def test_spring_forward_gap_in_alaska_becomes_the_transition_instant():
    # Anchorage, Sunday 2023-03-12 02:30-05:00: 02:30 does not exist -> 03:00 AKDT = 11:00 UTC; 05:00 AKDT
    # = 13:00 UTC. (pandas' own 'shift_forward' lands an hour late in this zone.)
    r = report_row([("s", "2023-03-12 12:30:00", "active")], [("s", 6, "02:30:00", "05:00:00")],
                   "2023-03-12 14:00:00", tz=zones(("s", "America/Anchorage")))
    expect(r, uptime_last_day=2)


def test_closed_hour_removed_by_dst_does_not_make_a_store_open_forever():
    # Open all week except Sunday 02:00-03:00, which the 2023-03-12 clock change skips: the intervals
    # merge across that Sunday, but the store was still closed a week earlier. Its only poll (in
    # February) lies in an earlier interval, so the week of 2023-03-13..20 is unknown, not down.
    schedule = [("s", d, "00:00:00", "23:59:59") for d in range(6)] + [("s", 6, "00:00:00", "02:00:00"),
                                                                         ("s", 6, "03:00:00", "23:59:59")]
    frame = classic_report(polls(("s", "2023-02-20 15:00:00", "inactive"), ("t", "2023-03-20 12:00:00", "active")),
                           hours(*schedule), CHICAGO, extended=True)
    expect(row(frame, "s"), downtime_last_week=0, uptime_last_week=0, unknown_last_week=167)


def test_samoa_skipped_day_is_no_business_time():
    # Pacific/Apia skipped Friday 2011-12-30. A store open only on Fridays had no business time that week.
    frame = classic_report(polls(("s", "2011-12-29 20:00:00", "active"), ("s", "2012-01-01 20:00:00", "active")),
                           hours(("s", 4, "09:00:00", "17:00:00")), zones(("s", "Pacific/Apia")),
                           "2012-01-02 00:00:00", extended=True)
    expect(row(frame), uptime_last_week=0, downtime_last_week=0, unknown_last_week=0)


# --- output safety --------------------------------------------------------------------------------------

def test_report_csv_never_starts_a_store_id_like_a_formula(tmp_path):
    from report_generator import write_csv_atomically

    ids = ['=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "\tx", "plain", "a=b", "-4506838894953744859"]
    frame = classic_report(polls(*[(i, "2023-01-28 10:00:00", "active") for i in ids]), hours(), zones())
    write_csv_atomically(frame, tmp_path / "r.csv")
    written = pd.read_csv(tmp_path / "r.csv", dtype={"store_id": str}, keep_default_na=False)["store_id"].tolist()
    # A negative integer id is a number to a spreadsheet, not a formula: it stays as it is.
    assert sorted(written) == sorted(["'" + i for i in ids[:5]] + ids[5:])


def test_report_memory_does_not_grow_with_the_longest_store_id():
    import tracemalloc

    def peak(long_id: str) -> int:
        rows = [(f"store-{n}", "2023-01-28 10:00:00", "active") for n in range(2000)] + [
            (long_id, "2023-01-28 10:00:00", "active")]
        frame = polls(*rows)
        tracemalloc.start()
        classic_report(frame, hours(), zones())
        peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak_bytes

    # A fixed-width text array would take 2001 x 100,000 x 4 bytes = 800 MB here.
    assert peak("x" * 100_000) - peak("x") < 20 * 1024 * 1024


def test_one_digit_hours_read_like_two():
    poll_rows = [("s", "2023-01-23 16:00:00", "active")]
    one = report_row(poll_rows, [("s", 0, "9:00:00", "12:00:00")], "2023-01-23 18:00:00")
    two = report_row(poll_rows, [("s", 0, "09:00:00", "12:00:00")], "2023-01-23 18:00:00")
    assert one == two and one["uptime_last_day"] == 3
