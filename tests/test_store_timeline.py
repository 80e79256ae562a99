"""A store's timeline explains its report row exactly: same totals, and segments that add up to them."""
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

import database
import sample_data
from report_generator import EXTENDED_COLUMNS, ReportError, compute_report, generate_timeline, store_timeline

WINDOW_HOURS = {"hour": 1, "day": 24, "week": 168}
UNIT_SECONDS = {"hour": 60, "day": 3600, "week": 3600}
KIND = {"up": "uptime", "down": "downtime", "unknown": "unknown"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    paths = sample_data.generate_dataset(tmp_path_factory.mktemp("timeline"), stores=150, days=9, seed=7,
                                         special_share=0.5)
    read = {table: pd.read_csv(path, dtype=str, keep_default_na=False) for table, path in paths.items()}
    read["business_hours"] = read["business_hours"].rename(columns={"day": "day_of_week"})
    return paths, read


def seconds(iso_begin: str, iso_end: str) -> Fraction:
    delta = pd.Timestamp(iso_end) - pd.Timestamp(iso_begin)
    return Fraction(delta.value, 10**9)


def summed_from_segments(timeline: dict) -> dict:
    """Each window's up/down/unknown, summed from the segments alone and rounded like the report."""
    now = pd.Timestamp(timeline["now"])
    totals = {}
    for window, hours in WINDOW_HOURS.items():
        start = now - pd.Timedelta(hours=hours)
        for status, prefix in KIND.items():
            total = Fraction(0)
            for segment in timeline["segments"]:
                if segment["status"] == status:
                    lo, hi = max(pd.Timestamp(segment["begin"]), start), min(pd.Timestamp(segment["end"]), now)
                    if hi > lo:
                        total += seconds(lo.isoformat(), hi.isoformat())
            hundredths = total * 100 / UNIT_SECONDS[window]
            totals[f"{prefix}_last_{window}"] = float(int(hundredths + Fraction(1, 2))) / 100
    return totals


@pytest.mark.parametrize("reach", [120, None, 30])
def test_timeline_totals_equal_the_report_row_on_random_stores(dataset, reach):
    _, read = dataset
    polls = read["store_status"]
    polls = polls.assign(timestamp_utc=pd.to_datetime(polls["timestamp_utc"].str.replace(" UTC", ""), utc=True,
                                                      format="ISO8601"))
    report = compute_report(polls, read["business_hours"], read["timezones"], special_hours=read["special_hours"],
                            reach_minutes=reach, extended=True).set_index("store_id")
    rng = np.random.default_rng(reach or 0)
    for store in rng.choice(report.index.to_numpy(), size=25, replace=False):
        timeline = store_timeline(polls, read["business_hours"], read["timezones"], store_id=store,
                                  special_hours=read["special_hours"], reach_minutes=reach)
        expected = report.loc[store, EXTENDED_COLUMNS[1:]].to_dict()
        assert timeline["totals"] == pytest.approx(expected, abs=1e-9), store
        # The segments (the chart) add up to the same figures; up/down segments name their poll.
        assert summed_from_segments(timeline) == pytest.approx(expected, abs=1e-9), store
        for segment in timeline["segments"]:
            assert (segment["poll"] is None) == (segment["status"] == "unknown")
            assert segment["begin"] < segment["end"]


def test_timeline_from_the_database_and_its_fields(dataset, tmp_path):
    paths, _ = dataset
    db_path = tmp_path / "t.sqlite3"
    conn = database.connect(db_path)
    database.load_tables(conn, paths)
    store = conn.execute("SELECT store_id FROM special_hours LIMIT 1").fetchone()[0]
    conn.close()
    timeline = generate_timeline(db_path, store, days=7)
    assert timeline["store_id"] == store and timeline["timezone_source"] in ("store", "default (missing)")
    assert pd.Timestamp(timeline["now"]) - pd.Timestamp(timeline["from"]) == pd.Timedelta(days=7)
    assert timeline["special_dates"] and all(d["closed"] or d["hours"] for d in timeline["special_dates"])
    assert any(polled["evidence"] for polled in timeline["polls"])
    one_day = generate_timeline(db_path, store, days=1)
    assert one_day["totals"] == timeline["totals"]  # the figures never depend on how much is drawn
    assert all(s["end"] > one_day["from"] for s in one_day["segments"])
    with pytest.raises(KeyError):
        generate_timeline(db_path, "no-such-store")
    with pytest.raises(ReportError):
        generate_timeline(db_path, store, days=8)


def test_dst_change_and_special_date_are_marked():
    polls = pd.DataFrame([("s", "2023-03-11 18:00:00", "active"), ("s", "2023-03-12 18:00:00", "inactive")],
                         columns=["store_id", "timestamp_utc", "status"])
    hours = pd.DataFrame([("s", d, "09:00:00", "17:00:00") for d in range(7)],
                         columns=["store_id", "day_of_week", "start_time_local", "end_time_local"])
    zones = pd.DataFrame([("s", "America/Chicago")], columns=["store_id", "timezone_str"])
    special = pd.DataFrame([("s", "2023-03-12", "10:00:00", "14:00:00"), ("s", "2023-03-10", None, None)],
                           columns=["store_id", "date", "start_time_local", "end_time_local"])
    timeline = store_timeline(polls, hours, zones, "2023-03-13 00:00:00", store_id="s", special_hours=special,
                              reach_minutes=None, days=3)
    assert timeline["dst_changes"] == [{"at": "2023-03-12T08:00:00Z", "offset_before": "-06:00",
                                        "offset_after": "-05:00"}]
    assert {"date": "2023-03-10", "closed": True, "hours": []} in timeline["special_dates"]
    sunday = [i for i in timeline["business_intervals"] if i["special_date"] == "2023-03-12"]
    assert sunday == [{"begin": "2023-03-12T15:00:00Z", "end": "2023-03-12T19:00:00Z",
                       "begin_local": "2023-03-12T10:00:00-05:00", "end_local": "2023-03-12T14:00:00-05:00",
                       "special_date": "2023-03-12"}]
