"""sample_data: determinism, the real file formats, and the proportions the docstring promises."""
from __future__ import annotations

import csv
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

import sample_data
from sample_data import generate_dataset

# `2023-01-22 12:09:39.388884 UTC`: fraction 2-6 digits without trailing zero, or none.
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,5}[1-9])? UTC$")
TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d:[0-5]\d$")
INT64_ID = re.compile(r"^[1-9]\d{0,18}$")


@pytest.fixture(scope="module")
def int64_set(tmp_path_factory) -> dict[str, Path]:
    return generate_dataset(tmp_path_factory.mktemp("int64"), stores=400, days=8, seed=7)


@pytest.fixture(scope="module")
def uuid_set(tmp_path_factory) -> dict[str, Path]:
    return generate_dataset(tmp_path_factory.mktemp("uuid"), stores=200, days=3, seed=7, id_style="uuid")


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def polls(paths) -> pd.DataFrame:
    df = pd.read_csv(paths["store_status"], dtype=str)
    df["t"] = pd.to_datetime(df["timestamp_utc"].str.removesuffix(" UTC"), format="ISO8601", utc=True)
    return df


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate_dataset(tmp_path / "a", stores=60, days=2, seed=3)
    b = generate_dataset(tmp_path / "b", stores=60, days=2, seed=3)
    c = generate_dataset(tmp_path / "c", stores=60, days=2, seed=4)
    assert set(a) == {"store_status", "business_hours", "timezones", "special_hours"}
    for key in a:
        assert a[key].name == f"{key}.csv"
        assert a[key].read_bytes() == b[key].read_bytes()
        assert a[key].read_bytes() != c[key].read_bytes()


def test_int64_edition_matches_real_format(int64_set):
    status = rows(int64_set["store_status"])
    assert status[0] == ["store_id", "status", "timestamp_utc"]
    for store_id, state, ts in status[1:]:
        assert INT64_ID.match(store_id), store_id
        assert state in ("active", "inactive")
        assert TIMESTAMP.match(ts), ts
    hours = rows(int64_set["business_hours"])
    assert hours[0] == ["store_id", "day", "start_time_local", "end_time_local"]
    for store_id, day, start, end in hours[1:]:
        assert INT64_ID.match(store_id) and day in "0123456" and len(day) == 1
        assert TIME.match(start) and TIME.match(end)
    tz = rows(int64_set["timezones"])
    assert tz[0] == ["store_id", "timezone_str"]
    assert {z for _, z in tz[1:]} <= set(sample_data.TIMEZONE_WEIGHTS)
    for path in int64_set.values():           # like the real 2023 files: LF endings, trailing newline
        data = path.read_bytes()
        assert data.endswith(b"\n") and b"\r" not in data and not data.startswith(b"\xef\xbb\xbf")


def test_uuid_edition_matches_real_format(uuid_set):
    status = rows(uuid_set["store_status"])
    assert status[0] == ["store_id", "status", "timestamp_utc"]
    for store_id, _, ts in status[1:50]:
        assert uuid.UUID(store_id).version == 4 and str(uuid.UUID(store_id)) == store_id
        assert TIMESTAMP.match(ts)
    hours = rows(uuid_set["business_hours"])
    assert hours[0] == ["store_id", "dayOfWeek", "start_time_local", "end_time_local"]
    # The published 2024 hours/timezone files have no trailing newline.
    assert not uuid_set["business_hours"].read_bytes().endswith(b"\n")
    assert not uuid_set["timezones"].read_bytes().endswith(b"\n")
    df = polls(uuid_set)
    assert df["t"].max() < datetime(2024, 10, 3, 23, 55, 2, tzinfo=timezone.utc)


def test_timestamp_fraction_digits_like_real_data(int64_set):
    ts = polls(int64_set)["timestamp_utc"]
    digits = ts.str.extract(r"\.(\d+) UTC$")[0].str.len()
    share = digits.value_counts(normalize=True)
    assert share[6] > 0.8 and share[5] > 0.05          # real: 90 % / 9 %
    assert digits.dropna().between(2, 6).all()


def test_polls_hourly_with_misses_outages_and_shuffled(int64_set):
    df = polls(int64_set)
    end = sample_data.DEFAULT_END["int64"]
    assert df["t"].max() < end and df["t"].max() > pd.Timestamp(end) - pd.Timedelta(minutes=30)
    assert df["t"].min() >= pd.Timestamp(end) - pd.Timedelta(days=8)
    assert df["store_id"].nunique() == 400
    # ~hourly: the typical gap between a store's consecutive polls is an hour give or take minutes.
    gaps = df.sort_values(["store_id", "t"]).groupby("store_id")["t"].diff().dropna().dt.total_seconds()
    assert 3300 < gaps.median() < 3900
    # Missed polls ~15-25 % outside the collector-outage day (2023-01-23 has no polls, like the real data).
    assert not (df["t"].dt.date == datetime(2023, 1, 23).date()).any()
    hours_covered = 8 * 24 - 24
    missed = 1 - len(df) / (400 * hours_covered)
    assert 0.12 < missed < 0.30, missed
    # Inactive share: a few percent overall, varying per store up to ~25 % and more.
    inactive = df["status"].eq("inactive")
    assert 0.03 < inactive.mean() < 0.2
    per_store = inactive.groupby(df["store_id"]).mean()
    assert per_store.quantile(0.2) < 0.03 and per_store.quantile(0.95) > 0.15
    # Outages are runs: a store's inactive poll is more often followed by another inactive one.
    ordered = df.sort_values(["store_id", "t"])
    nxt = ordered.groupby("store_id")["status"].shift(-1)
    after_inactive = nxt[ordered["status"].eq("inactive") & nxt.notna()].eq("inactive").mean()
    assert after_inactive > 0.4
    # Not sorted, like the real export.
    assert not df["t"].is_monotonic_increasing
    assert not df["store_id"].is_monotonic_increasing


def test_business_hours_shapes(int64_set):
    df = polls(int64_set)
    hours = pd.read_csv(int64_set["business_hours"], dtype=str)
    polled = set(df["store_id"])
    with_hours = polled & set(hours["store_id"])
    assert 0.10 < 1 - len(with_hours) / len(polled) < 0.27          # ~18 % open 24/7
    per_store_day = hours.groupby(["store_id", "day"]).size()
    assert per_store_day.max() <= 4 and (per_store_day >= 2).any()  # split shifts
    assert ((hours.start_time_local == "00:00:00") & (hours.end_time_local == "23:59:59")).any()
    assert (hours.end_time_local == "23:59:59").mean() > 0.05
    assert (hours.end_time_local < hours.start_time_local).any()     # overnight rows
    days = hours.groupby("store_id")["day"].nunique()
    assert (days == 7).mean() > 0.6 and (days < 7).any()             # some weekdays missing
    rows_per_store = len(hours) / hours["store_id"].nunique()
    assert 6 < rows_per_store < 9.5                                   # real: 7.75
    # Some stores appear only in the hours/timezone files (never polled), as in real exports.
    assert set(hours["store_id"]) - polled


def test_timezones(int64_set):
    df = polls(int64_set)
    tz = pd.read_csv(int64_set["timezones"], dtype=str)
    assert tz["store_id"].is_unique
    polled = set(df["store_id"])
    assert 0.01 < 1 - len(polled & set(tz["store_id"])) / len(polled) < 0.10   # ~5 % without
    share = tz["timezone_str"].value_counts(normalize=True)
    assert share.index[0] == "America/New_York" and share["America/New_York"] > 0.45


def test_poll_scale_lengthens_history(tmp_path):
    one = polls(generate_dataset(tmp_path / "one", stores=30, days=4, seed=1))
    three = polls(generate_dataset(tmp_path / "three", stores=30, days=4, seed=1, poll_scale=3))
    assert three["store_id"].nunique() == one["store_id"].nunique() == 30
    span = (three["t"].max() - three["t"].min()) / (one["t"].max() - one["t"].min())
    assert 2.8 < span < 3.3
    assert 2.8 < len(three) / len(one) < 4.5   # the single outage day weighs less in a longer history
    # Hours and timezones do not depend on the poll history.
    h1 = (tmp_path / "one" / "business_hours.csv").read_bytes()
    assert h1 == (tmp_path / "three" / "business_hours.csv").read_bytes()


def test_end_and_validation(tmp_path):
    end = datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc)
    df = polls(generate_dataset(tmp_path, stores=20, days=1, seed=0, end=end))
    assert df["t"].max() < end and df["t"].min() >= pd.Timestamp(end) - pd.Timedelta(days=1)
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, id_style="guid")


def test_cli(tmp_path, capsys):
    assert sample_data.main(["--out", str(tmp_path), "--stores", "25", "--days", "1", "--id-style", "uuid"]) == 0
    out = capsys.readouterr().out
    assert "store_status" in out and (tmp_path / "timezones.csv").exists()
    header = (tmp_path / "business_hours.csv").read_text().splitlines()[0]
    assert header == "store_id,dayOfWeek,start_time_local,end_time_local"


def test_given_store_ids_are_polled(tmp_path):
    given = ["b", "a", "c", "a"]
    df = polls(generate_dataset(tmp_path, stores=5, days=1, seed=0, store_ids=given))
    ids = set(df["store_id"])
    assert {"a", "b", "c"} <= ids and len(ids) == 5
    few = polls(generate_dataset(tmp_path / "few", stores=2, days=1, seed=0, store_ids=given))
    assert set(few["store_id"]) == {"b", "a"}


def test_polls_per_hour_densifies_polling(tmp_path):
    one = polls(generate_dataset(tmp_path / "one", stores=30, days=2, seed=1))
    four = polls(generate_dataset(tmp_path / "four", stores=30, days=2, seed=1, polls_per_hour=4))
    assert 3.5 < len(four) / len(one) < 4.5
    gaps = four.sort_values(["store_id", "t"]).groupby("store_id")["t"].diff().dropna().dt.total_seconds()
    assert 800 < gaps.median() < 1000     # every 15 minutes


def test_special_hours_are_a_closed_day_and_maybe_a_short_day_in_the_last_week(tmp_path):
    paths = generate_dataset(tmp_path / "s", stores=400, days=8, seed=1)
    special = rows(paths["special_hours"])
    assert special[0] == ["store_id", "date", "start_time_local", "end_time_local"]
    closed = [r for r in special[1:] if r[2:] == ["", ""]]
    short = [r for r in special[1:] if r[2:] == ["10:00:00", "14:00:00"]]
    assert len(closed) + len(short) == len(special) - 1
    assert 40 <= len(closed) <= 120 and 0 < len(short) <= len(closed)  # about 20% of 400 stores
    assert {r[1] for r in special[1:]} <= {f"2023-01-{day}" for day in range(18, 26)}
    none = generate_dataset(tmp_path / "n", stores=400, days=8, seed=1, special_share=0)
    assert rows(none["special_hours"]) == [special[0]]
    assert none["store_status"].read_bytes() == paths["store_status"].read_bytes()  # own random stream
