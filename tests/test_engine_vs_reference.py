"""The vectorised engine equals the plain reference implementation on thousands of random stores.

The random data aims at the places where the rules meet: special hours (closed dates, overnight rows,
24-hour rows, 23:59:59, several rows on one date, DST change dates, rejected rows), stores with no weekly
rows, polls months before the week, reach from one minute to a week and unbounded, and polls placed exactly
on business-interval bounds, window starts, now, reach distances from those, and midpoints.
"""
from datetime import datetime, time, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import reference

UTC = timezone.utc
US, MINUTE, HOUR, DAY = reference.US, reference.MINUTE, reference.HOUR, reference.DAY
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
# Reach in minutes, as the engine takes it: "default" leaves the argument out on both sides (120 min).
REACHES = ["default", None, 1, 2, 7, 30, 59, 60, 61, 119, 120, 121, 180, 719, 1440, 10079, 10080]
# Special rows whose times make them closed, and rows that must be rejected as if absent.
CLOSED = [("", ""), (None, None), ("", None)]
BAD_TIMES = [("", "10:00:00"), ("09:00:00", None), ("24:00:00", "02:00:00"), ("09:00:00", "25:30:00"),
             ("12:60:00", "13:00:00"), ("noon", "13:00:00")]
BAD_DATES = ["2023-02-30", "2023-13-01", "2023-00-10", "2023-11-31", "yesterday"]


def local_date(us: int, zone) -> "datetime.date":
    return reference.from_us(us).astimezone(zone).date()


def dst_change_dates(zone, first_day, last_day):
    """Local dates whose midnight-to-midnight offset changes (including a date a zone skips altogether)."""
    found, day = [], first_day
    while day <= last_day:
        offsets = {datetime.combine(d, time()).replace(tzinfo=zone).utcoffset() for d in (day, day + timedelta(1))}
        if len(offsets) > 1:
            found.append(day)
        day += timedelta(days=1)
    return found


def random_special_row(rng, store, day):
    """One special row for `day`: closed, overnight, 24 h (start == end), to 23:59:59, or any two TIMES."""
    kind = rng.random()
    if kind < 0.25:
        start, end = CLOSED[rng.integers(len(CLOSED))]
    elif kind < 0.4:
        start = end = TIMES[rng.integers(len(TIMES))]
    elif kind < 0.5:
        start, end = TIMES[rng.integers(5, len(TIMES))], ["23:59:59", "23:59:59.999"][rng.integers(2)]
    elif kind < 0.6:
        start, end = TIMES[rng.integers(10, 14)], TIMES[rng.integers(0, 8)]  # overnight
    else:
        start, end = TIMES[rng.integers(len(TIMES))], TIMES[rng.integers(len(TIMES))]
    return (store, day.isoformat(), start, end)


def rejected_special_row(rng, store, day):
    """A row the contract rejects; it sits on a date where it would matter if it were read."""
    kind = rng.integers(3)
    if kind == 0:
        return (store, day.isoformat(), *BAD_TIMES[rng.integers(len(BAD_TIMES))])
    if kind == 1:
        return (store, BAD_DATES[rng.integers(len(BAD_DATES))], *CLOSED[rng.integers(len(CLOSED))])
    return (["", None][rng.integers(2)], day.isoformat(), *CLOSED[rng.integers(len(CLOSED))])


def interesting_instants(rng, store, rows, store_special, zone, now_us, reach_us):
    """Instants where rules meet: interval bounds, window starts, now, reach away from those, midpoints."""
    first_day = local_date(now_us - 8 * DAY, zone) - timedelta(days=1)
    last_day = local_date(now_us, zone) + timedelta(days=1)
    special_by_date = reference.read_special_rows(store_special).get(store, {})
    bounds = [b for interval in reference.business_intervals(rows, special_by_date, zone, first_day, last_day)
              for b in interval if now_us - 8 * DAY <= b <= now_us]
    windows = [now_us - length for length in reference.WINDOWS.values()] + [now_us]
    chosen = [int(x) for x in rng.choice(bounds, size=min(len(bounds), 6), replace=False)] if bounds else []
    chosen += [int(x) for x in rng.choice(windows, size=int(rng.integers(1, 5)), replace=False)]
    stamps = list(chosen)
    for x in chosen:
        if reach_us is not None and rng.random() < 0.5:  # a poll whose reach ends exactly at x
            stamps.append(x + reach_us * [-1, 1][rng.integers(2)])
        if rng.random() < 0.4:  # two polls whose midpoint is exactly x
            d = int(rng.choice([1, 2, US, 30 * MINUTE, HOUR, 3 * HOUR]))
            stamps += [x - d, x + d]
        if rng.random() < 0.2:
            stamps.append(x + int(rng.choice([-1, 1])))
    return stamps


def random_dataset(rng: np.random.Generator, n_stores: int, now_us: int, reach_us):
    polls, hours, zones, special = [], [], {}, []
    for n in range(n_stores):
        store = f"{rng.integers(-10**18, 10**18)}-{n}"
        zone_name = ZONES[rng.integers(len(ZONES))]
        if zone_name is not None:
            zones[store] = zone_name
        zone = reference.resolve_zone(zone_name)
        rows, store_special, stamps = [], [], []
        today = local_date(now_us, zone)
        polled_recently = True
        shape = rng.random()
        if shape < 0.12:  # open all week, or all week but one slot that a DST gap may remove
            rows += [(day, "00:00:00", "23:59:59") for day in range(6)]
            rows += [(6, "00:00:00", "02:00:00"), (6, ["02:00:00", "03:00:00"][rng.integers(2)], "23:59:59")]
        elif shape < 0.65:  # random weekly rows; none at all is 24/7
            for _ in range(rng.integers(0, 6)):
                start, end = TIMES[rng.integers(len(TIMES))], TIMES[rng.integers(len(TIMES))]
                rows.append((int(rng.integers(0, 7)), start, end))
        elif shape < 0.85:  # 24/7
            pass
        else:  # 24/7 (or whole week open) and polled months ago: only an unbounded reach lets those polls speak
            if rng.random() < 0.3:
                rows += [(day, "00:00:00", "00:00:00") for day in range(7)]
            old = sorted(int(now_us - rng.integers(20 * DAY, 200 * DAY)) for _ in range(rng.integers(1, 3)))
            stamps += old
            polled_recently = rng.random() < 0.3  # mostly the polls stopped months ago
            # Special dates months back: between the old poll and the week (the window becomes unknown),
            # before it (no effect), on its date (it may fall outside the special hours).
            for _ in range(rng.integers(0, 3)):
                where = rng.random()
                if where < 0.5:
                    day = local_date(int(rng.integers(old[-1], now_us - 8 * DAY)), zone)
                elif where < 0.75:
                    day = local_date(old[0], zone) - timedelta(days=int(rng.integers(1, 30)))
                else:
                    day = local_date(old[int(rng.integers(len(old)))], zone)
                store_special.append(random_special_row(rng, store, day))
        # Special rows near the week: random dates, and the zone's DST change dates.
        if rng.random() < 0.6:
            near = [today - timedelta(days=int(k)) for k in rng.integers(-1, 10, size=rng.integers(1, 5))]
            changes = dst_change_dates(zone, today - timedelta(days=9), today + timedelta(days=1))
            near += changes if rng.random() < 0.7 else []
            for day in near:
                store_special += [random_special_row(rng, store, day) for _ in range(rng.integers(1, 4))]
            if rng.random() < 0.1:  # an exact duplicate row
                store_special.append(store_special[-1])
        if rng.random() < 0.3:
            for _ in range(rng.integers(1, 3)):
                day = today - timedelta(days=int(rng.integers(-1, 9)))
                store_special.append(rejected_special_row(rng, store, day))
        hours += [(store, *row) for row in rows]
        special += store_special
        kind = rng.random()
        if not polled_recently:
            pass
        elif kind < 0.1:  # a few polls, some long before the week
            stamps += list(now_us - rng.integers(0, 40 * DAY, size=rng.integers(1, 4)))
        elif kind < 0.2:  # polls at exact instants: on the hour, duplicates, at now
            stamps += list(now_us - HOUR * rng.integers(0, 24 * 9, size=rng.integers(1, 12)))
            stamps += stamps[:2] + [now_us]
        else:  # roughly hourly with gaps over about nine days, plus a few after now
            stamps += list(now_us - rng.integers(-2 * HOUR, 9 * DAY, size=int(rng.integers(0, 60))))
        if polled_recently and rng.random() < 0.5:
            stamps += interesting_instants(rng, store, rows, store_special, zone, now_us, reach_us)
        if len(stamps) >= 2 and rng.random() < 0.3:  # polls at the midpoints of two others
            for _ in range(rng.integers(1, 4)):
                a, b = rng.choice(len(stamps), size=2, replace=False)
                stamps.append((int(stamps[a]) + int(stamps[b])) // 2)
        for t in stamps:
            polls.append((store, int(t), "active" if rng.random() < 0.7 else "inactive"))
    return polls, hours, zones, special


def engine_rows(polls, hours, zones, now_us, special, reach, special_as_none):
    # Imported here so that the module (and its reference-only tests) loads while the engine changes.
    from report_generator import EXTENDED_COLUMNS, compute_report
    options = {} if reach == "default" else {"reach_minutes": reach}
    frame = compute_report(
        pd.DataFrame([(s, pd.Timestamp(t, unit="us", tz="UTC"), st_) for s, t, st_ in polls],
                     columns=["store_id", "timestamp_utc", "status"]),
        pd.DataFrame(hours, columns=["store_id", "day_of_week", "start_time_local", "end_time_local"]),
        pd.DataFrame(list(zones.items()), columns=["store_id", "timezone_str"]),
        pd.Timestamp(now_us, unit="us", tz="UTC"),
        special_hours=None if special_as_none else pd.DataFrame(
            special, columns=["store_id", "date", "start_time_local", "end_time_local"]),
        extended=True, **options)
    return frame[EXTENDED_COLUMNS].to_dict("records")


def reference_rows(polls, hours, zones, now_us, special, reach):
    options = {} if reach == "default" else {"reach_us": None if reach is None else reach * MINUTE}
    return reference.report(polls, hours, zones, now_us, special=special, **options)


def random_reach(rng):
    """Unbounded often (only then do polls months before the week speak for it), else listed or any."""
    draw = rng.random()
    if draw < 0.3:
        return None
    if draw < 0.65:
        return REACHES[rng.integers(len(REACHES))]
    return int(rng.integers(1, 10081))


def scenario(seed, which_now, n_stores, reach="random"):
    """(now_us, reach, dataset) from a seed; the reach is drawn from the seed unless given."""
    rng = np.random.default_rng(seed)
    now_us = reference.to_us(NOWS[which_now]) + int(rng.integers(0, 3600)) * US
    if reach == "random":
        reach = random_reach(rng)
    reach_us = reference.DEFAULT_REACH_US if reach == "default" else None if reach is None else reach * MINUTE
    return now_us, reach, random_dataset(rng, n_stores, now_us, reach_us)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(seed=st.integers(0, 2**32 - 1), which_now=st.integers(0, len(NOWS) - 1))
def test_engine_equals_reference_on_random_stores(seed, which_now):
    now_us, reach, (polls, hours, zones, special) = scenario(seed, which_now, 100)
    expected = reference_rows(polls, hours, zones, now_us, special, reach)
    actual = engine_rows(polls, hours, zones, now_us, special, reach, special_as_none=not special and seed % 2 == 0)
    assert [r["store_id"] for r in actual] == [r["store_id"] for r in expected]
    for got, want in zip(actual, expected):
        assert got == pytest.approx(want, abs=1e-9), got["store_id"]


# --- the reference and the generator on their own (no engine) ------------------------------------------

@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(seed=st.integers(0, 2**32 - 1), which_now=st.integers(0, len(NOWS) - 1))
def test_reference_unknown_shrinks_as_reach_grows(seed, which_now):
    """More reach never makes less known; up, down and unknown always share the same business time."""
    now_us, _, (polls, hours, zones, special) = scenario(seed, which_now, 40)
    runs = [reference.report(polls, hours, zones, now_us, special=special, reach_us=r)
            for r in (0, MINUTE, 61 * MINUTE, reference.DEFAULT_REACH_US, 7 * DAY, None)]
    for rows in zip(*runs):
        for w in reference.WINDOWS:
            unknown = [row[f"unknown_last_{w}"] for row in rows]
            assert unknown == sorted(unknown, reverse=True), rows[0]["store_id"]
            totals = [row[f"uptime_last_{w}"] + row[f"downtime_last_{w}"] + row[f"unknown_last_{w}"] for row in rows]
            assert max(totals) - min(totals) <= 0.03 + 1e-9  # three roundings of at most 0.005 each
            zero_reach = rows[0]
            assert zero_reach[f"uptime_last_{w}"] == zero_reach[f"downtime_last_{w}"] == 0


def test_generator_covers_the_cases_it_claims():
    """Over a few seeds the random data holds every kind of special row and poll the module docstring names."""
    seen = set()
    for seed in range(12):
        now_us, reach, (polls, hours, zones, special) = scenario(seed, seed % len(NOWS), 100)
        seen.add("unbounded reach" if reach is None else "finite reach")
        valid = reference.read_special_rows(special)
        weekly = {}
        for store, *row in hours:
            weekly.setdefault(store, []).append(tuple(row))
        read = [(store, date_text, start, end) for store, date_text, start, end in special
                if reference.read_special_rows([(store, date_text, start, end)])]
        seen |= {"closed"} if any(reference.is_blank(start) for _, _, start, _ in read) else set()
        seen |= {"start == end"} if any(start == end and start for _, _, start, end in read) else set()
        seen |= {"overnight"} if any(start and end < start for _, _, start, end in read) else set()
        seen |= {"to 23:59:59"} if any(end and end.startswith("23:59:59") for _, _, _, end in read) else set()
        seen |= {"rejected"} if len(read) < len(special) else set()
        seen |= {"several rows on a date"} if any(len(r) > 1 for d in valid.values() for r in d.values()) else set()
        seen |= {"special, no weekly rows"} if set(valid) - set(weekly) else set()
        seen |= {"special, open all week"} if any(len({day for day, *_ in weekly.get(s, [])}) == 7 for s in valid) \
            else set()
        seen |= {"special months back"} if any(day < reference.from_us(now_us - 20 * DAY).date()
                                               for d in valid.values() for day in d) else set()
        seen |= {"DST date"} if any(day in (datetime(2023, 3, 12).date(), datetime(2023, 11, 5).date())
                                    for d in valid.values() for day in d) else set()
        instants = {}
        for store, t, _ in polls:
            instants.setdefault(store, set()).add(t)
        everyone = set().union(*instants.values())
        seen |= {"poll at now"} if now_us in everyone else set()
        seen |= {"poll at week start"} if now_us - 7 * DAY in everyone else set()
        for store in list(instants)[:30]:  # a poll exactly on a business-interval bound of its store
            zone = reference.resolve_zone(zones.get(store))
            days = local_date(now_us - 8 * DAY, zone), local_date(now_us, zone)
            intervals = reference.business_intervals(weekly.get(store, []), valid.get(store, {}), zone, *days)
            if any(bound in instants[store] for interval in intervals for bound in interval):
                seen.add("poll on a bound")
    assert seen == {"unbounded reach", "finite reach", "closed", "start == end", "overnight", "to 23:59:59",
                    "rejected", "several rows on a date", "special, no weekly rows", "special, open all week",
                    "special months back", "DST date", "poll at now", "poll at week start", "poll on a bound"}
