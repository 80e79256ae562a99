"""The report engine: uptime and downtime within business hours, exactly as docs/report-semantics.md says.

`compute_report` is a pure function over DataFrames. It is vectorised: NumPy over all polls at once;
the only Python loops run over timezones and local dates (a handful each), never over stores or polls.

Time representation. All instants are int64 microseconds since the Unix epoch (UTC). Nearest-poll
boundaries are midpoints of two polls, which may fall on half a microsecond, so segment bounds are kept
in *half-microsecond ticks* (2 x microseconds). Every sum is then an exact integer, and the only
rounding is the final conversion to minutes/hours.

`generate_report` reads what a report needs from the database, computes, and writes the CSV atomically.
"""
from __future__ import annotations

import csv
import io
import multiprocessing
import os
import re
import signal
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from datetime import date, datetime, timedelta, timezone
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import pytz

from config import DEFAULT_REACH_MINUTES, DEFAULT_TIMEZONE, MAX_REACH_MINUTES

US_PER_SECOND = 1_000_000
US_PER_HOUR = 3600 * US_PER_SECOND
US_PER_DAY = 24 * US_PER_HOUR
TICKS_PER_US = 2  # half-microsecond ticks, see module docstring

# Report windows: name, length. All end at `now` and are half-open: [now - length, now).
WINDOWS = (("hour", US_PER_HOUR), ("day", US_PER_DAY), ("week", 7 * US_PER_DAY))
WEEK_US = WINDOWS[-1][1]
# Hour columns are in minutes, day and week columns in hours.
WINDOW_UNIT_US = {"hour": 60 * US_PER_SECOND, "day": US_PER_HOUR, "week": US_PER_HOUR}

STANDARD_COLUMNS = [
    "store_id",
    "uptime_last_hour", "uptime_last_day", "uptime_last_week",
    "downtime_last_hour", "downtime_last_day", "downtime_last_week",
]
EXTENDED_COLUMNS = STANDARD_COLUMNS + ["unknown_last_hour", "unknown_last_day", "unknown_last_week"]

# Business intervals are generated from the local dates starting this long before the week window.
# A store whose schedule covers every hour of the local week is open continuously (see
# `_covers_whole_week`); any other store closes once a week, except where a DST gap or a skipped day
# removes its closed hours, which the tz database never does two weeks running. So a merged interval
# lasts under two weeks, and rows of up to two days earlier can reach into it: 17 days is enough for
# every interval that touches the week to be complete.
HORIZON_BEFORE_WEEK_US = 17 * US_PER_DAY
# With unbounded reach, how far before a store's first special date its dates are generated (see
# `_store_intervals`): four weeks hold at least three without a DST change.
SPECIAL_LOOKBACK_DAYS = 30


EPOCH_DATE = date(1970, 1, 1)
SPECIAL_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
NOT_A_DATE = np.iinfo(np.int64).min

KNOWN_ZONES = frozenset(pytz.all_timezones)  # pytz's own set is lazy and slow to query


class ReportError(ValueError):
    """A report cannot be made from the data as it is; the message is meant for the user."""


@dataclass
class ReportOutcome:
    rows: int
    as_of: pd.Timestamp
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


# --- input normalisation --------------------------------------------------------------------------

def _timestamps_us(values: pd.Series) -> np.ndarray:
    """UTC epoch microseconds from datetimes (naive = UTC) or ISO text."""
    if not pd.api.types.is_datetime64_any_dtype(values):
        values = pd.to_datetime(values, utc=True, format="ISO8601")
    elif values.dt.tz is None:
        values = values.dt.tz_localize("UTC")
    return values.dt.tz_convert("UTC").dt.as_unit("us").astype("int64").to_numpy()


def _to_utc_us(moment) -> int:
    ts = pd.Timestamp(moment)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.as_unit("us").asm8.astype("int64"))


def _factorize(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (-1 for missing) and the distinct values as text; cheap for categoricals."""
    if isinstance(values.dtype, pd.CategoricalDtype):  # keep the categories' order (see compute_report)
        return values.cat.codes.to_numpy(np.int64), _texts(values.cat.categories)
    codes, uniques = pd.factorize(values)
    return codes, _texts(uniques)


def _texts(values) -> np.ndarray:
    """Values as an object array of str. Not NumPy's fixed-width text: that sizes every element by the
    longest one, so one very long store_id would make the arrays of all stores huge."""
    return np.array([str(value) for value in values], dtype=object)


def _lookup(per_unique: np.ndarray, codes: np.ndarray, missing) -> np.ndarray:
    """per_unique[codes], with `missing` where the code is -1."""
    return np.append(per_unique, missing)[codes]


def _parse_time_of_day(text: str) -> int:
    hours, minutes, seconds = text.strip().split(":")
    whole, _, fraction = seconds.partition(".")
    # 'H:MM:SS' too, as the loader and the reference read it (the loader stores 'HH:MM:SS').
    if not (len(hours) in (1, 2) and len(minutes) == len(whole) == 2
            and (hours + minutes + whole + fraction).isdigit()):
        return -1
    us = ((int(hours) * 60 + int(minutes)) * 60 + int(whole)) * US_PER_SECOND + int((fraction + "000000")[:6])
    return us if int(minutes) < 60 and int(whole) < 60 and us < US_PER_DAY else -1


def _time_of_day_us(values: pd.Series) -> np.ndarray:
    """Microseconds since local midnight for 'HH:MM:SS[.f]' text; -1 where unreadable or out of range.

    Schedules repeat a few hundred distinct times, so each distinct text is parsed once.
    """
    codes, texts = _factorize(values)
    parsed = np.array([_parse_time_of_day(t) if t.count(":") == 2 else -1 for t in texts], dtype=np.int64)
    return _lookup(parsed, codes, -1)


def _resolve_timezones(store_ids: pd.Index, timezones: pd.DataFrame, default_timezone: str):
    """The zone of each store as (index into `zones`, zones), plus counts of missing and unknown names.

    Missing or empty names, and names the tz database does not know, take the default zone.
    """
    given = timezones.assign(store_id=timezones["store_id"].astype(str)).drop_duplicates("store_id", keep="last")
    row_of_store = pd.Index(given["store_id"]).get_indexer(store_ids)
    name_codes, names = _factorize(given["timezone_str"])
    names = np.array([name.strip() for name in names], dtype=object)
    code = _lookup(name_codes, row_of_store, -1)
    missing = (code < 0) | _lookup(names == "", code, True)
    unknown = ~missing & ~_lookup(np.isin(names, list(KNOWN_ZONES)), code, False)
    zones = np.append(names, default_timezone)
    zone_of_store = np.where(missing | unknown, len(names), code)
    used, zone_of_store = np.unique(zone_of_store, return_inverse=True)
    return zone_of_store, zones[used], int(missing.sum()), int(unknown.sum())


# --- business intervals -----------------------------------------------------------------------------

def _localize_earliest(local_us: np.ndarray, tz) -> np.ndarray:
    """Local wall-clock microseconds -> UTC microseconds in the pytz zone `tz`.

    Ambiguous times (fall back) take the earlier instant; nonexistent times (spring-forward gap) become
    the instant of the transition. pandas marks the nonexistent ones (NaT) and those few are resolved by
    `_gap_transition_us`: its own 'shift_forward' lands an hour late in zones such as America/Anchorage.
    """
    index = pd.DatetimeIndex(local_us.astype("datetime64[us]"))
    as_dst = index.tz_localize(tz, ambiguous=np.ones(len(index), bool), nonexistent="NaT")
    as_std = index.tz_localize(tz, ambiguous=np.zeros(len(index), bool), nonexistent="NaT")
    utc = np.minimum(as_dst.as_unit("us").asi8, as_std.as_unit("us").asi8)
    in_gap = np.asarray(as_dst.isna())
    if in_gap.any():
        skipped, which = np.unique(local_us[in_gap], return_inverse=True)
        utc[in_gap] = np.array([_gap_transition_us(int(value), tz) for value in skipped], np.int64)[which]
    return utc


def _gap_transition_us(local_us: int, tz) -> int:
    """The UTC instant of the transition that skipped the local time `local_us` (whole seconds).

    The wall clock u + offset(u) rises with the UTC instant u except at fall-back transitions, and
    none lies within a day of a spring-forward gap; so the first instant whose wall clock is past the
    skipped time is the transition, found by bisection.
    """
    def wall_clock_s(utc_s: int) -> int:
        moment = datetime.fromtimestamp(utc_s, timezone.utc).astimezone(tz)
        return utc_s + int(moment.utcoffset().total_seconds())

    target_s = local_us // US_PER_SECOND
    low, high = target_s - 26 * 3600, target_s + 26 * 3600  # offsets are within +-14 h: wall clock below, above
    while high - low > 1:
        middle = (low + high) // 2
        if wall_clock_s(middle) > target_s:
            high = middle
        else:
            low = middle
    return high * US_PER_SECOND


def _business_intervals(codes: np.ndarray, day: np.ndarray, start_us: np.ndarray, end_us: np.ndarray,
                        special: "_SpecialRows", zone_of_code: np.ndarray, zones: np.ndarray, from_us: int,
                        to_us: int, first_day: np.ndarray):
    """UTC intervals (code, begin, end) of each weekly row on every local date in [from_us, to_us] that has
    no special rows for its store, and of each open special row on its date.

    Rows are already normalised: `end_us` may exceed one day (overnight or 24-hour rows). `first_day`
    (days since the epoch, by store code) lets a store start earlier than `from_us`'s date (see
    `_store_intervals`). Also returns, by store code, the UTC instant of the local midnight its
    generated dates start at.
    """
    out_codes, out_begin, out_end = [], [], []
    first_midnight = np.zeros(len(zone_of_code), np.int64)
    row_zone = zone_of_code[codes]
    special_zone = zone_of_code[special.store]
    for zone_code in np.unique(np.concatenate([row_zone, special_zone])):
        in_zone = np.flatnonzero(row_zone == zone_code)
        tz = pytz.timezone(zones[zone_code])
        first = pd.Timestamp(from_us, unit="us", tz="UTC").tz_convert(tz).date()
        last = pd.Timestamp(to_us, unit="us", tz="UTC").tz_convert(tz).date()
        usual_first = (first - EPOCH_DATE).days
        zone_stores = np.unique(codes[in_zone])
        earliest = int(first_day[zone_stores].min(initial=usual_first))
        dates = pd.date_range(EPOCH_DATE + timedelta(days=min(earliest, usual_first)), last, freq="D")
        midnights = dates.as_unit("us").asi8
        date_number = midnights // US_PER_DAY
        # Special rows of this zone's stores on these dates, grouped by date.
        sp = np.flatnonzero((special_zone == zone_code) & (special.date >= date_number[0])
                            & (special.date <= date_number[-1]))
        sp = sp[np.argsort(special.date[sp], kind="stable")]
        sp_dates = special.date[sp]
        # Schedules repeat a few hundred distinct times of day: convert each (date, time) pair once.
        times, time_index = np.unique(np.concatenate([[0], start_us[in_zone], end_us[in_zone],
                                                      special.start_us[sp], special.end_us[sp]]),
                                      return_inverse=True)
        n_rows = len(in_zone)
        start_index, end_index = time_index[1:1 + n_rows], time_index[1 + n_rows:1 + 2 * n_rows]
        sp_start_index, sp_end_index = np.split(time_index[1 + 2 * n_rows:], 2)
        utc = _localize_earliest((midnights[:, None] + times[None, :]).ravel(), tz).reshape(len(dates), len(times))
        zone_first = np.maximum(first_day[zone_stores], date_number[0])
        zone_first = np.where(zone_first < usual_first, zone_first, usual_first)
        first_midnight[zone_stores] = utc[zone_first - date_number[0], 0]
        row_first_day = np.minimum(first_day[codes[in_zone]], usual_first)
        rows_of_weekday = [np.flatnonzero(day[in_zone] == weekday) for weekday in range(7)]
        for date_index, weekday in enumerate(dates.day_of_week):
            rows = rows_of_weekday[weekday]
            number = date_number[date_index]
            if number < usual_first:  # only stores that start early (rare) have rows on these dates
                rows = rows[row_first_day[rows] <= number]
            lo, hi = np.searchsorted(sp_dates, [number, number + 1])
            if hi > lo:
                # The date's special rows replace the weekday's rows of their stores.
                special_of_date = np.arange(lo, hi)
                if number < usual_first:
                    special_of_date = special_of_date[first_day[special.store[sp[special_of_date]]] <= number]
                rows = rows[~np.isin(codes[in_zone[rows]], special.store[sp[special_of_date]])]
                special_of_date = special_of_date[~special.closed[sp[special_of_date]]]
                out_codes.append(special.store[sp[special_of_date]])
                out_begin.append(utc[date_index, sp_start_index[special_of_date]])
                out_end.append(utc[date_index, sp_end_index[special_of_date]])
            out_codes.append(codes[in_zone[rows]])
            out_begin.append(utc[date_index, start_index[rows]])
            out_end.append(utc[date_index, end_index[rows]])
    if not out_codes:
        empty = np.empty(0, np.int64)
        return empty, empty, empty, first_midnight
    return np.concatenate(out_codes), np.concatenate(out_begin), np.concatenate(out_end), first_midnight


def _merge_intervals(codes: np.ndarray, begin: np.ndarray, end: np.ndarray):
    """Merge overlapping or touching intervals per store. Returns sorted (code, begin, end)."""
    keep = end > begin  # zero-length intervals (e.g. inside a DST gap) hold no time
    codes, begin, end = codes[keep], begin[keep], end[keep]
    if len(codes) == 0:
        return codes, begin, end
    # Every store gets its own band of the number line: one int64 key sorts by (store, begin), and a
    # running maximum of `end` never crosses from one store into the next.
    base = begin.min()
    band = int(end.max() - base) + 1
    order = np.argsort(codes * band + (begin - base))
    codes, begin, end = codes[order], begin[order], end[order]
    reach = np.maximum.accumulate(codes * band + (end - base))
    starts_new = np.ones(len(codes), bool)
    starts_new[1:] = (codes[1:] != codes[:-1]) | (codes[1:] * band + (begin[1:] - base) > reach[:-1])
    first = np.flatnonzero(starts_new)
    last = np.append(first[1:], len(codes)) - 1
    return codes[first], begin[first], reach[last] - codes[last] * band + base


def _round_hundredths(ticks: np.ndarray, unit: int) -> np.ndarray:
    """ticks / unit rounded to 2 decimals, half up, computed exactly on integers.

    The sums are whole ticks below 2**53, so the float64 totals from bincount are exact integers.
    """
    ticks = np.rint(ticks).astype(np.int64)
    return ((200 * ticks + unit) // (2 * unit)) / 100


# --- the engine ---------------------------------------------------------------------------------------

def compute_report(polls: pd.DataFrame, business_hours: pd.DataFrame, timezones: pd.DataFrame,
                   now=None, *, special_hours: pd.DataFrame | None = None,
                   reach_minutes: int | None = DEFAULT_REACH_MINUTES, default_timezone: str = DEFAULT_TIMEZONE,
                   store_ids: Iterable[str] | None = None, extended: bool = False) -> pd.DataFrame:
    """The report rows for every store with a poll at or before `now`, sorted by store_id as text.

    polls: store_id, timestamp_utc (datetime64 or ISO text), status ('active'/'inactive').
    business_hours: store_id, day_of_week (0 = Monday), start_time_local, end_time_local ('HH:MM:SS[.f]').
    timezones: store_id, timezone_str.
    special_hours: store_id, date ('YYYY-MM-DD', local), start_time_local, end_time_local (both empty or
    None: closed that date); optional.
    now: the reference time (UTC); default the latest poll. Polls after it are ignored.
    reach_minutes: how far a poll speaks on either side of it; None = unbounded (classic nearest poll).
    store_ids: report only these stores. extended: add the unknown_last_* columns.
    Metadata (the report's now, reach, timezone counts, stale stores) is returned in `frame.attrs`.
    """
    parts = _compute(polls, business_hours, timezones, now, special_hours, reach_minutes, default_timezone,
                     store_ids)
    p, iv, segments = parts.polls, parts.intervals, parts.segments
    result = {"store_id": p.stores, **_window_totals(p, iv, segments)}
    text_order = np.argsort(np.asarray(p.stores, dtype=object), kind="stable")
    frame = pd.DataFrame(result)[EXTENDED_COLUMNS if extended else STANDARD_COLUMNS]
    frame = frame.iloc[text_order].reset_index(drop=True)
    frame.attrs.update({
        "now": pd.Timestamp(p.now_us, unit="us", tz="UTC"),
        "reach_minutes": None if reach_minutes is None else int(reach_minutes),
        "stores": len(p.stores),
        "stores_without_timezone": parts.n_missing_tz,
        "stores_with_unknown_timezone": parts.n_unknown_tz,
        "stores_without_polls_this_week": parts.n_stale,
        "default_timezone": default_timezone,
    })
    return frame


@dataclass
class _Computation:
    """Everything a report is made of: the polls read, the business intervals, each poll's segment."""
    polls: "_Polls"
    intervals: "_Intervals"
    segments: "_Segments"
    zone_of_store: np.ndarray
    zones: np.ndarray
    n_missing_tz: int
    n_unknown_tz: int
    n_stale: int          # stores whose last poll is older than the week window


def _compute(polls, business_hours, timezones, now, special_hours, reach_minutes, default_timezone,
             store_ids) -> _Computation:
    if default_timezone not in KNOWN_ZONES:
        raise ReportError(f"default timezone {default_timezone!r} is not in the tz database")
    if reach_minutes is not None and not (isinstance(reach_minutes, (int, np.integer))
                                          and 1 <= reach_minutes <= MAX_REACH_MINUTES):
        raise ReportError(f"reach_minutes must be an integer from 1 to {MAX_REACH_MINUTES}, or None "
                          f"for unbounded; got {reach_minutes!r}")
    reach_us = None if reach_minutes is None else int(reach_minutes) * 60 * US_PER_SECOND
    p = _read_polls(polls, now, store_ids)
    zone_of_store, zones, n_missing_tz, n_unknown_tz = _resolve_timezones(p.stores, timezones, default_timezone)
    week_start = p.now_us - WEEK_US
    last_poll = np.full(len(p.stores), np.iinfo(np.int64).min)
    np.maximum.at(last_poll, p.store, p.t_us)
    iv = _store_intervals(business_hours, special_hours, p, zone_of_store, zones, week_start, reach_us)
    p = _fold_stale_polls(p, iv.neg_inf)
    segments = _nearest_poll_segments(p, iv, reach_us)
    return _Computation(p, iv, segments, zone_of_store, zones, n_missing_tz, n_unknown_tz,
                        int((last_poll < week_start).sum()))


def _window_totals(p: "_Polls", iv: "_Intervals", segments: "_Segments") -> dict[str, np.ndarray]:
    """The report's figures per store (in store-number order), rounded, by column name."""
    n_stores = len(p.stores)
    seg_store = iv.store[segments.interval]
    end_ticks = TICKS_PER_US * p.now_us
    result = {}
    for name, length in WINDOWS:
        window_begin = TICKS_PER_US * (p.now_us - length)
        covered = _overlap(segments.begin, segments.end, window_begin, end_ticks)
        up = np.bincount(seg_store, weights=np.where(segments.active, covered, 0), minlength=n_stores)
        down = np.bincount(seg_store, weights=np.where(segments.active, 0, covered), minlength=n_stores)
        # Business time no poll speaks for: intervals without evidence, and time out of every poll's reach.
        business = np.bincount(iv.store, minlength=n_stores, weights=_overlap(
            TICKS_PER_US * iv.begin, TICKS_PER_US * iv.end, window_begin, end_ticks))
        unit = TICKS_PER_US * WINDOW_UNIT_US[name]
        result[f"uptime_last_{name}"] = _round_hundredths(up, unit)
        result[f"downtime_last_{name}"] = _round_hundredths(down, unit)
        result[f"unknown_last_{name}"] = _round_hundredths(business - up - down, unit)
    return result


@dataclass
class _Polls:
    """Readable polls at or before now of the reported stores; `store` indexes `stores`."""
    store: np.ndarray     # int64 store number, 0..len(stores)-1
    t_us: np.ndarray      # int64 UTC microseconds
    active: np.ndarray    # bool
    stores: pd.Index      # store_id text of each store number
    input_index: pd.Index  # every store_id of the input, for mapping other tables
    number_of_input: np.ndarray  # input store position -> store number, -1 if not reported
    now_us: int


def _read_polls(polls: pd.DataFrame, now, store_ids: Iterable[str] | None) -> _Polls:
    status_codes, statuses = _factorize(polls["status"])
    active = _lookup(statuses == "active", status_codes, False)
    readable = _lookup(np.isin(statuses, ["active", "inactive"]), status_codes, False)
    codes, store_texts = _factorize(polls["store_id"])
    readable &= codes >= 0
    t_us = _timestamps_us(polls["timestamp_utc"])
    if now is not None:
        now_us = _to_utc_us(now)
    elif readable.any():
        now_us = int(t_us[readable].max())
    else:
        raise ReportError("there are no polls to report on")
    codes, t_us, active = _select(readable & (t_us <= now_us), codes, t_us, active)

    # The stores reported: those with a poll at or before now (optionally only those asked for).
    input_index = pd.Index(store_texts)
    present = np.zeros(len(input_index), bool)
    present[codes] = True
    if store_ids is not None:
        present &= np.asarray(input_index.isin(list(store_ids)))
    # Number the reported stores 0..n-1 in the input's order of codes: polls that arrive grouped by store
    # stay sorted, and only the n output rows are put in store_id text order at the end.
    number_of_input = np.full(len(input_index), -1, np.int64)
    number_of_input[present] = np.arange(int(present.sum()))
    store, t_us, active = _select(number_of_input[codes] >= 0, number_of_input[codes], t_us, active)
    return _Polls(store, t_us, active, pd.Index(store_texts[present]), input_index, number_of_input, now_us)


def _select(mask: np.ndarray, *arrays: np.ndarray):
    """The elements of each array where `mask` holds; no copy in the common case that it always holds."""
    if mask.all():
        return arrays
    return tuple(array[mask] for array in arrays)


@dataclass
class _Intervals:
    """Merged business intervals of the reported stores that reach into the week window, sorted."""
    store: np.ndarray
    begin: np.ndarray   # UTC microseconds; `neg_inf` for "open since ever"
    end: np.ndarray     # capped at now: a status never holds past it
    limit: np.ndarray   # the real end: a poll before it (and at or after begin) is evidence
    neg_inf: int
    pos_inf: int


@dataclass
class _SpecialRows:
    """Readable special-hours rows of reported stores (see `_special_rows`)."""
    store: np.ndarray
    date: np.ndarray       # local date, days since 1970-01-01
    start_us: np.ndarray   # normalised like weekly rows; 0 for closed rows
    end_us: np.ndarray
    closed: np.ndarray     # bool: both times empty, no opening that date

    def select(self, mask: np.ndarray) -> "_SpecialRows":
        return _SpecialRows(*(getattr(self, name)[mask] for name in ("store", "date", "start_us", "end_us",
                                                                      "closed")))


def _store_intervals(business_hours: pd.DataFrame, special_hours: pd.DataFrame | None, p: _Polls,
                     zone_of_store: np.ndarray, zones: np.ndarray, week_start: int,
                     reach_us: int | None) -> _Intervals:
    n_stores = len(p.stores)
    horizon = week_start - HORIZON_BEFORE_WEEK_US
    store, day, start_us, end_us = _schedule_rows(business_hours, p)
    special = _special_rows(special_hours, p)
    has_weekly = np.zeros(n_stores, bool)
    has_weekly[store] = True
    # A store without weekly rows is open 00:00-24:00 on every date without special rows: give the ones
    # with special rows those seven weekly rows, so special dates replace them like any other.
    only_special = np.flatnonzero(~has_weekly & np.isin(np.arange(n_stores), special.store))
    store = np.concatenate([store, np.repeat(only_special, 7)])
    day = np.concatenate([day, np.tile(np.arange(7), len(only_special))])
    start_us = np.concatenate([start_us, np.zeros(7 * len(only_special), np.int64)])
    end_us = np.concatenate([end_us, np.full(7 * len(only_special), US_PER_DAY)])
    has_weekly[only_special] = True
    # Open every hour of the local week: stores without rows, and those whose rows cover the whole week.
    whole_week = ~has_weekly | _covers_whole_week(store, day, start_us, end_us, n_stores)

    first_day = np.full(n_stores, np.iinfo(np.int64).max)
    if reach_us is not None:
        # A poll reaches at most a week (MAX_REACH_MINUTES), so only polls from two weeks before the
        # window can touch it, and only intervals from there on can clip them: special dates older
        # than the generated dates make no difference.
        near = ((special.date >= (horizon - 2 * US_PER_DAY) // US_PER_DAY)
                & (special.date <= (p.now_us + 2 * US_PER_DAY) // US_PER_DAY))
        special = special.select(near)
    else:
        # Unbounded reach: a store's last poll before the horizon may still speak for the week, unless a
        # special date closed the store in between. Stores with special rows start their dates early
        # enough to see that: four days before their first poll (so that poll's interval is complete),
        # but no earlier than SPECIAL_LOOKBACK_DAYS before their first special date (before it, a store
        # open all week never closes, and any other store closes at least once in those weeks: a weekly
        # closure can vanish in a spring-forward gap, but not in three weeks running); and at least
        # three days before the horizon, so that their first generated date is either free of special
        # rows or of polls (see `since_ever` below).
        earliest_poll = np.full(n_stores, np.iinfo(np.int64).max)
        np.minimum.at(earliest_poll, p.store, p.t_us)
        earliest_special = np.full(n_stores, np.iinfo(np.int64).max)
        np.minimum.at(earliest_special, special.store, special.date)
        early = earliest_special < np.iinfo(np.int64).max
        first_day[early] = np.minimum(horizon // US_PER_DAY - 3, np.maximum(
            earliest_poll[early] // US_PER_DAY - 4, earliest_special[early] - SPECIAL_LOOKBACK_DAYS))
    has_special = np.zeros(n_stores, bool)
    has_special[special.store] = True
    always_open = whole_week & ~has_special  # one interval "since ever", nothing to generate
    # Stand-ins for minus and plus infinity, outside every time the report looks at: generated intervals
    # begin at the earliest on the local midnight before `horizon` (or a store's early first day).
    neg_inf = min(horizon, int(first_day.min(initial=horizon // US_PER_DAY)) * US_PER_DAY) - 2 * US_PER_DAY
    pos_inf = p.now_us + US_PER_DAY

    rows = ~always_open[store]
    iv_store, iv_begin, iv_end, first_midnight = _business_intervals(
        store[rows], day[rows], start_us[rows], end_us[rows], special.select(~always_open[special.store]),
        zone_of_store, zones, horizon, p.now_us + US_PER_DAY, first_day)
    iv_store, iv_begin, iv_end = _merge_intervals(iv_store, iv_begin, iv_end)
    # A store open all week apart from special dates is open "since ever" before its first generated
    # date: its first interval, begun within a day of that date's midnight (DST: 26 h), began long before,
    # unless a special date lies there; then (unbounded reach) the store has no poll that early, and
    # (bounded reach) polls that early cannot reach the week: either way only the begin moves, and no
    # number depends on it.
    first_of_store = np.r_[True, iv_store[1:] != iv_store[:-1]] if len(iv_store) else np.zeros(0, bool)
    since_ever = first_of_store & whole_week[iv_store] & (iv_begin < first_midnight[iv_store] + 26 * US_PER_HOUR)
    iv_begin = np.where(since_ever, neg_inf, iv_begin)

    always_open = np.flatnonzero(always_open)
    iv_store = np.concatenate([iv_store, always_open])
    iv_begin = np.concatenate([iv_begin, np.full(len(always_open), neg_inf)])
    iv_limit = np.concatenate([iv_end, np.full(len(always_open), pos_inf)])
    iv_end = np.minimum(iv_limit, p.now_us)
    relevant = (iv_end > week_start) & (iv_begin < iv_end)
    order = np.lexsort((iv_begin[relevant], iv_store[relevant]))
    return _Intervals(*(a[relevant][order] for a in (iv_store, iv_begin, iv_end, iv_limit)), neg_inf, pos_inf)


def _covers_whole_week(store: np.ndarray, day: np.ndarray, start_us: np.ndarray, end_us: np.ndarray,
                       n_stores: int) -> np.ndarray:
    """Per store: do its rows cover every instant of the local week (Monday 00:00 to Monday 00:00)?

    Such a store is open continuously in UTC as well, DST or not: each local date is covered from its
    midnight to the next, and touching local times map to the same instant.
    """
    begin = day * US_PER_DAY + start_us
    end = day * US_PER_DAY + end_us
    wraps = end > WEEK_US  # Sunday night rows continue into Monday morning
    codes, begin, end = _merge_intervals(np.concatenate([store, store[wraps]]),
                                         np.concatenate([begin, np.zeros(int(wraps.sum()), np.int64)]),
                                         np.concatenate([np.minimum(end, WEEK_US), end[wraps] - WEEK_US]))
    whole = np.zeros(n_stores, bool)
    whole[codes[(begin == 0) & (end == WEEK_US)]] = True
    return whole


def _store_numbers(store_ids: pd.Series, p: _Polls) -> np.ndarray:
    """The report's store number of each row's store_id; -1 for stores not reported (or missing ids)."""
    codes, store_texts = _factorize(store_ids)
    input_position = _lookup(p.input_index.get_indexer(store_texts), codes, -1)
    return np.where(input_position >= 0, p.number_of_input[input_position], -1)


def _normalise_row_times(start_us: np.ndarray, end_us: np.ndarray) -> np.ndarray:
    """The row's end in microseconds after the local midnight of its date: '23:59:59' (with or without
    fraction) means midnight at the end of the day; end <= start ends on the next local day (start ==
    end: open 24 hours)."""
    end_us = np.where(end_us // US_PER_SECOND == US_PER_DAY // US_PER_SECOND - 1, US_PER_DAY, end_us)
    return np.where(end_us <= start_us, end_us + US_PER_DAY, end_us)


def _schedule_rows(business_hours: pd.DataFrame, p: _Polls):
    """Readable hours rows of reported stores: (store, weekday, start, end) in microseconds after local
    midnight, with `end` past 24 h for rows that close on the next local day."""
    hours = business_hours if len(business_hours) else pd.DataFrame(
        {"store_id": [], "day_of_week": [], "start_time_local": [], "end_time_local": []}, dtype=object)
    store = _store_numbers(hours["store_id"], p)
    day = pd.to_numeric(hours["day_of_week"], errors="coerce").to_numpy(dtype=float)
    start_us = _time_of_day_us(hours["start_time_local"])
    end_us = _time_of_day_us(hours["end_time_local"])
    # Rows the loader would reject count as absent (a store left without rows is open 24/7).
    valid = (store >= 0) & np.isin(day, np.arange(7)) & (start_us >= 0) & (end_us >= 0)
    store, day, start_us, end_us = store[valid], day[valid].astype(np.int64), start_us[valid], end_us[valid]
    return store, day, start_us, _normalise_row_times(start_us, end_us)


def _special_rows(special_hours: pd.DataFrame | None, p: _Polls) -> _SpecialRows:
    """Readable special-hours rows of reported stores. Rows the loader would reject (date not a real
    YYYY-MM-DD, a time unreadable, exactly one time empty) count as absent."""
    if special_hours is None or not len(special_hours):
        empty = np.empty(0, np.int64)
        return _SpecialRows(empty, empty, empty, empty, np.empty(0, bool))
    store = _store_numbers(special_hours["store_id"], p)
    date_codes, date_texts = _factorize(special_hours["date"])
    date_number = _lookup(np.array([_parse_date(text) for text in date_texts], np.int64), date_codes, NOT_A_DATE)

    def time_of_day(column: str) -> tuple[np.ndarray, np.ndarray]:
        values = special_hours[column]
        empty = (values.isna() | (values.astype(object).fillna("").astype(str).str.strip() == "")).to_numpy()
        return _time_of_day_us(values), empty

    start_us, start_empty = time_of_day("start_time_local")
    end_us, end_empty = time_of_day("end_time_local")
    closed = start_empty & end_empty
    valid = (store >= 0) & (date_number != NOT_A_DATE) & (closed | ((start_us >= 0) & (end_us >= 0)))
    start_us = np.where(closed, 0, start_us)
    end_us = np.where(closed, 0, end_us)
    rows = _SpecialRows(store, date_number, start_us, _normalise_row_times(start_us, end_us), closed)
    return rows.select(valid)


def _parse_date(text: str) -> int:
    """Days since 1970-01-01 of a 'YYYY-MM-DD' date; NOT_A_DATE if it is not one (e.g. 2023-02-30)."""
    text = text.strip()
    if not SPECIAL_DATE_RE.fullmatch(text):
        return NOT_A_DATE
    try:
        return (date.fromisoformat(text) - EPOCH_DATE).days
    except ValueError:
        return NOT_A_DATE


def _fold_stale_polls(p: _Polls, neg_inf: int) -> _Polls:
    """Polls older than `neg_inf` can only fall in an interval open since "minus infinity", and of those
    only each store's latest can own time in the week window. Keep just that instant, moved to `neg_inf`:
    membership is unchanged, and its midpoint with the next poll stays before the window (the horizon is
    more than a week before it), so no number changes."""
    stale = np.flatnonzero(p.t_us < neg_inf)
    if len(stale) == 0:
        return p
    latest = pd.Series(p.t_us[stale]).groupby(p.store[stale]).transform("max").to_numpy()
    keep = np.ones(len(p.t_us), bool)
    keep[stale[p.t_us[stale] < latest]] = False
    # A store with a real poll at `neg_inf` itself needs none of its older ones (that poll is nearer to
    # every later instant), and a moved poll must not merge with it into one instant.
    keep[stale[np.isin(p.store[stale], p.store[p.t_us == neg_inf])]] = False
    return replace(p, store=p.store[keep], t_us=np.maximum(p.t_us[keep], neg_inf), active=p.active[keep])


@dataclass
class _Segments:
    """Each evidence poll (at `t_us`) owns [begin, end) in ticks, within its business interval `interval`."""
    interval: np.ndarray
    begin: np.ndarray
    end: np.ndarray
    active: np.ndarray
    t_us: np.ndarray


def _nearest_poll_segments(p: _Polls, iv: _Intervals, reach_us: int | None) -> _Segments:
    # One sorted key for polls and intervals: the store's band of the number line, plus the time.
    band = iv.pos_inf - iv.neg_inf + 1
    if len(p.stores) * band >= 2 ** 62:
        raise ReportError("too many stores for one report; restrict it with store_ids")
    poll_key = p.store * band + (p.t_us - iv.neg_inf)
    store, t_us, active = p.store, p.t_us, p.active
    if not np.all(poll_key[1:] >= poll_key[:-1]):  # the database hands them over (nearly) sorted
        order = np.argsort(poll_key, kind="stable")
        poll_key, store, t_us, active = poll_key[order], store[order], t_us[order], active[order]
    # Two polls of one store at one instant: identical ones count once; if they differ, inactive wins.
    first_of_instant = np.ones(len(poll_key), bool)
    first_of_instant[1:] = poll_key[1:] != poll_key[:-1]
    if not first_of_instant.all():
        runs = np.flatnonzero(first_of_instant)
        active = np.minimum.reduceat(active.astype(np.int8), runs).astype(bool)
        poll_key, store, t_us = poll_key[runs], store[runs], t_us[runs]

    # The interval of each poll: the last one of its store beginning at or before it, if it reaches it.
    # Both lists are sorted, so search the (fewer) interval begins among the polls, and count how many
    # begins lie at or before each poll.
    first_poll_at_or_after = np.searchsorted(poll_key, iv.store * band + (iv.begin - iv.neg_inf), side="left")
    interval = np.cumsum(np.bincount(first_poll_at_or_after, minlength=len(poll_key) + 1))[:len(poll_key)] - 1
    evidence = (_lookup(iv.store, interval, -1) == store) & (t_us < _lookup(iv.limit, interval, 0))
    g, t, active = interval[evidence], t_us[evidence], active[evidence]

    # Each poll owns [midpoint with the previous, midpoint with the next) of its interval; the first
    # from the interval's begin, the last up to its end (already capped at now). Midpoints in ticks are
    # the plain sums of two microsecond times.
    first = np.ones(len(g), bool)
    first[1:] = g[1:] != g[:-1]
    last = np.ones(len(g), bool)
    last[:-1] = first[1:]
    begin = np.empty(len(g), np.int64)
    begin[1:] = t[:-1] + t[1:]
    end = np.empty(len(g), np.int64)
    end[:-1] = begin[1:]
    begin[first] = TICKS_PER_US * iv.begin[g[first]]
    end[last] = TICKS_PER_US * iv.end[g[last]]
    if reach_us is not None:
        # A poll speaks for at most `reach` on either side; farther instants stay unknown. The poll lies
        # in its own segment, so clipping never turns a segment inside out.
        begin = np.maximum(begin, TICKS_PER_US * (t - reach_us))
        end = np.minimum(end, TICKS_PER_US * (t + reach_us))
    return _Segments(g, begin, end, active, t)


def _overlap(begin: np.ndarray, end: np.ndarray, window_begin: int, window_end: int) -> np.ndarray:
    """Length of [begin, end) inside [window_begin, window_end), as float64 weights for bincount."""
    return np.clip(np.minimum(end, window_end) - np.maximum(begin, window_begin), 0, None).astype(np.float64)


# --- one store's timeline: what each figure is made of --------------------------------------------------

def store_timeline(polls: pd.DataFrame, business_hours: pd.DataFrame, timezones: pd.DataFrame, now=None, *,
                   store_id: str, special_hours: pd.DataFrame | None = None,
                   reach_minutes: int | None = DEFAULT_REACH_MINUTES, default_timezone: str = DEFAULT_TIMEZONE,
                   days: int = 7) -> dict:
    """Why one store's report row says what it says, over the last `days` (1..7) before `now`.

    The same computation as `compute_report` (restricted to the store, which changes nothing: stores are
    independent), laid out as JSON-ready lists: its business intervals (UTC and local, special dates
    marked), its polls (and whether each is evidence), and segments covering all business time from
    `from` to `now`: `up`/`down` with the poll whose status they take, `unknown` where no poll speaks.
    `totals` is the store's report row under the report's column names. Raises KeyError for a store
    without a poll at or before now.
    """
    if not 1 <= int(days) <= 7:
        raise ReportError(f"days must be from 1 to 7, got {days!r}")
    parts = _compute(polls, business_hours, timezones, now, special_hours, reach_minutes, default_timezone,
                     [store_id])
    p, iv, seg = parts.polls, parts.intervals, parts.segments
    if list(p.stores) != [store_id]:
        raise KeyError(store_id)
    totals = {name: float(values[0]) for name, values in _window_totals(p, iv, seg).items()}
    zone_name = str(parts.zones[parts.zone_of_store[0]])
    tz = pytz.timezone(zone_name)
    given = timezones[timezones["store_id"].astype(str) == store_id]["timezone_str"]
    given_name = "" if given.empty or pd.isna(given.iloc[-1]) else str(given.iloc[-1]).strip()
    source = "store" if given_name == zone_name else ("default (missing)" if not given_name else "default (unknown)")
    from_us = p.now_us - int(days) * US_PER_DAY

    def utc(ticks: int) -> str:  # ticks are half microseconds; the half is dropped for display
        return pd.Timestamp(int(ticks) // TICKS_PER_US, unit="us", tz="UTC").isoformat().replace("+00:00", "Z")

    def local(us: int) -> str:
        return pd.Timestamp(int(us), unit="us", tz="UTC").tz_convert(tz).isoformat()

    special = _special_rows(special_hours, p)
    special_dates = sorted({int(d) for d in special.date})
    intervals, segments = [], []
    for k in np.flatnonzero((iv.end > from_us) & (iv.begin < p.now_us)):
        begin, end = max(int(iv.begin[k]), from_us), int(iv.end[k])
        local_dates = {(pd.Timestamp(begin, unit="us", tz="UTC").tz_convert(tz).date() - EPOCH_DATE).days,
                       (pd.Timestamp(end - 1, unit="us", tz="UTC").tz_convert(tz).date() - EPOCH_DATE).days}
        marked = [d for d in special_dates if min(local_dates) <= d <= max(local_dates)]
        intervals.append({"begin": utc(TICKS_PER_US * begin), "end": utc(TICKS_PER_US * end),
                          "begin_local": local(begin), "end_local": local(end),
                          "special_date": str(EPOCH_DATE + timedelta(days=marked[0])) if marked else None})
        # Walk the interval: each poll's segment, and unknown time before, between and after them.
        cursor = TICKS_PER_US * begin
        for j in np.flatnonzero(seg.interval == k):
            seg_begin, seg_end = max(int(seg.begin[j]), TICKS_PER_US * from_us), int(seg.end[j])
            if seg_end <= cursor:
                continue
            if seg_begin > cursor:
                segments.append(_segment(cursor, seg_begin, "unknown", None, utc))
            segments.append(_segment(max(seg_begin, cursor), seg_end, "up" if seg.active[j] else "down",
                                     int(seg.t_us[j]), utc))
            cursor = seg_end
        if cursor < TICKS_PER_US * end:
            segments.append(_segment(cursor, TICKS_PER_US * end, "unknown", None, utc))

    evidence = set(seg.t_us.tolist())
    shown = np.flatnonzero(p.t_us >= from_us - US_PER_DAY)  # the day before `from` explains its first hours
    poll_list = [{"at": utc(TICKS_PER_US * int(p.t_us[i])), "status": "active" if p.active[i] else "inactive",
                  "evidence": int(p.t_us[i]) in evidence} for i in shown[np.argsort(p.t_us[shown], kind="stable")]]
    by_date: dict[int, list] = {}
    for date_number, start, end, closed in zip(special.date, special.start_us, special.end_us, special.closed):
        hours = by_date.setdefault(int(date_number), [])
        if not closed:
            hours.append([_clock(int(start)), _clock(int(end) if end == US_PER_DAY else int(end) % US_PER_DAY)])
    first_date = (pd.Timestamp(from_us, unit="us", tz="UTC").tz_convert(tz).date() - EPOCH_DATE).days - 1
    return {
        "store_id": store_id, "timezone": zone_name, "timezone_source": source,
        "now": utc(TICKS_PER_US * p.now_us), "from": utc(TICKS_PER_US * from_us),
        "reach_minutes": None if reach_minutes is None else int(reach_minutes),
        "business_intervals": intervals,
        "special_dates": [{"date": str(EPOCH_DATE + timedelta(days=d)), "closed": not by_date[d], "hours": by_date[d]}
                          for d in sorted(by_date) if d >= first_date],
        "dst_changes": _dst_changes(tz, from_us, p.now_us),
        "polls": poll_list, "segments": segments, "totals": totals,
    }


def _segment(begin_ticks: int, end_ticks: int, status: str, poll_us: int | None, utc) -> dict:
    return {"begin": utc(begin_ticks), "end": utc(end_ticks), "status": status,
            "seconds": (end_ticks - begin_ticks) / (TICKS_PER_US * US_PER_SECOND),
            "poll": None if poll_us is None else utc(TICKS_PER_US * poll_us)}


def _clock(us: int) -> str:
    """Microseconds after local midnight as 'HH:MM:SS' (24:00:00 for the end of the day)."""
    seconds = us // US_PER_SECOND
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _dst_changes(tz, from_us: int, to_us: int) -> list[dict]:
    """The zone's UTC offset changes in [from_us, to_us): when, and the offsets before and after."""
    changes = []
    transitions = getattr(tz, "_utc_transition_times", [])
    for index, moment in enumerate(transitions):
        at = int(pd.Timestamp(moment).tz_localize("UTC").as_unit("us").asm8.astype("int64")) if index else None
        if at is None or not from_us <= at < to_us:
            continue
        before = pd.Timestamp(at - 1, unit="us", tz="UTC").tz_convert(tz).strftime("%z")
        after = pd.Timestamp(at, unit="us", tz="UTC").tz_convert(tz).strftime("%z")
        changes.append({"at": pd.Timestamp(at, unit="us", tz="UTC").isoformat().replace("+00:00", "Z"),
                        "offset_before": f"{before[:3]}:{before[3:]}", "offset_after": f"{after[:3]}:{after[3:]}"})
    return changes


def generate_timeline(location: str | Path, store_id: str, *, as_of=None,
                      reach_minutes: int | None = DEFAULT_REACH_MINUTES, days: int = 7,
                      default_timezone: str = DEFAULT_TIMEZONE) -> dict:
    """`store_timeline` from the database: the same read as a report restricted to this store."""
    import database

    inputs = database.read_report_inputs(location, lookback_us=WEEK_US,
                                         as_of_us=None if as_of is None else _to_utc_us(as_of),
                                         store_ids=[store_id])
    if inputs.now is None:
        raise ReportError("no polls have been loaded yet: load store_status data first")
    return store_timeline(inputs.polls, inputs.business_hours, inputs.timezones, inputs.now, store_id=store_id,
                          special_hours=inputs.special_hours, reach_minutes=reach_minutes,
                          default_timezone=default_timezone, days=days)


# --- from the database to a CSV file ---------------------------------------------------------------------

# Reports are computed in shards of stores: stores are independent of each other in a report, so each
# shard (a range of store keys) is read and computed on its own and the rows are merged in store_id text
# order, byte-identical to one computation over every store. Peak memory follows the shard, not the fleet.
# Stores per shard, at most (the service's SM_SHARD_STORES, config.Settings); embedded reports also split
# into at least one shard per process (generate_report). Each shard costs a read and, in the cluster, a
# round trip through the broker, so shards are as large as memory allows: SHARD_POLLS bounds that.
# Measured on 2 CPUs at 14,000 stores before the poll bound (bench/run.py): 4000 stores -> real size
# 0.38 s, 10x density 1.40 s with 500 MB per shard process; 2000 -> 0.44 s, 1.16 s, 305 MB; 1000 -> 0.49 s,
# 1.14 s, 198 MB.
SHARD_STORES = 10_000
# Polls in the report's week per shard, at most (SM_SHARD_POLLS): a shard's memory follows its polls, about
# 110 MB + 90 bytes a poll (bench/sizing.py: 2000 stores at 10 polls an hour, 2.3M polls, 331 MB; at 20 an
# hour 494 MB, and 1000 stores at 20 an hour 327 MB), so this keeps a shard process near 300 MB however
# densely stores are polled. At real size (about 120 polls a store) SHARD_STORES binds first.
SHARD_POLLS = 2_000_000
# Processes computing shards (SM_REPORT_PROCESSES); 0 = in the calling process, one shard after another.
REPORT_PROCESSES = min(2, os.cpu_count() or 1)

_pool_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_pool_owner: int | None = None  # the pid that started the pool: a forked child must not reuse it


def _shard_pool(processes: int) -> ProcessPoolExecutor:
    """The pool of shard processes, started once per process and reused. forkserver, never fork: the web
    server's processes run threads (job workers), and forking a process with threads running can copy a
    lock held by another thread. The fork server preloads this module, so a new worker starts warm."""
    global _pool, _pool_owner
    with _pool_lock:
        if _pool is None or _pool_owner != os.getpid():
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["report_generator", "database", "storage.sqlite"])
            _pool = ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_ignore_interrupts)
            _pool_owner = os.getpid()
        return _pool


def _ignore_interrupts() -> None:
    """Shard processes leave Ctrl-C to the process that started them: a terminal sends SIGINT to the whole
    process group, and the serving process lets its running reports finish before it exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def warm_pool(processes: int | None = None) -> None:
    """Start the shard processes now (without waiting for them), so the first report does not pay for it."""
    processes = REPORT_PROCESSES if processes is None else processes
    if processes >= 1:
        pool = _shard_pool(processes)
        for _ in range(processes):
            pool.submit(os.getpid)


def _discard_pool(pool: ProcessPoolExecutor) -> None:
    """Forget a broken pool (a worker died): the next report starts a new one."""
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def _report_shard(location: str, now_us: int, key_range: tuple[int, int] | None, store_ids: list[str] | None,
                  reach_minutes: int | None, default_timezone: str, extended: bool):
    """One shard's rows (sorted by store_id text) and metadata, read from the database on its own."""
    import database

    started = time.perf_counter()
    inputs = database.read_report_inputs(location, lookback_us=WEEK_US, as_of_us=now_us,
                                         store_ids=store_ids, key_range=key_range)
    loaded = time.perf_counter()
    frame = compute_report(inputs.polls, inputs.business_hours, inputs.timezones, inputs.now,
                           special_hours=inputs.special_hours, reach_minutes=reach_minutes,
                           default_timezone=default_timezone, store_ids=store_ids, extended=extended)
    attrs = dict(frame.attrs)
    frame.attrs = {}
    return frame, attrs, loaded - started, time.perf_counter() - loaded


SUMMED_ATTRS = ("stores", "stores_without_timezone", "stores_with_unknown_timezone",
                "stores_without_polls_this_week")


def _merge_shards(results: list) -> pd.DataFrame:
    """The shards' rows in store_id text order, as one computation over every store gives them."""
    frames = [frame for frame, _, _, _ in results if len(frame)] or [results[0][0]]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    order = np.argsort(np.asarray(frame["store_id"], dtype=object), kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    attrs = dict(results[0][1])
    for key in SUMMED_ATTRS:
        attrs[key] = sum(shard_attrs[key] for _, shard_attrs, _, _ in results)
    frame.attrs = attrs
    return frame


def plan_report(location: str | Path, *, shard_stores: int | None = None, shard_polls: int | None = None,
                min_shards: int = 1, as_of=None, store_ids: list[str] | None = None) -> tuple[int, list]:
    """The report's `now` (UTC microseconds: as_of, or the latest poll) and its shards: store_key ranges of
    at most `shard_stores` stores and about `shard_polls` polls in the week (defaults SHARD_STORES,
    SHARD_POLLS), at least `min_shards` of them where there are enough stores (see storage.cut_shards),
    or [None] for one shard over every chosen store.
    The embedded path (generate_report) and the cluster (cluster.py) plan with this one function.

    Raises ReportError when there is nothing to report on (no polls at all).
    """
    import database

    now_us, shards = database.plan_report_shards(location, shard_stores=SHARD_STORES if shard_stores is None
                                                 else shard_stores,
                                                 shard_polls=SHARD_POLLS if shard_polls is None else shard_polls,
                                                 min_shards=min_shards, lookback_us=WEEK_US,
                                                 as_of_us=None if as_of is None else _to_utc_us(as_of),
                                                 store_ids=store_ids)
    if now_us is None:
        raise ReportError("no polls have been loaded yet: load store_status data first")
    if len(shards) <= 1:
        shards = [None]  # one shard: read every chosen store, as an unsharded report does
    return now_us, list(shards)


def report_meta(location: str | Path, frame: pd.DataFrame, store_ids: list[str] | None, as_of) -> dict:
    """The job's metadata for a merged report: the frame's attrs but `now` (that is the job's as_of), and
    the warnings (`report_warnings`). `as_of` is what the job asked for (None: the latest poll)."""
    import database

    meta = {key: value for key, value in frame.attrs.items() if key != "now"}  # `now` is as_of
    first_poll_us = database.first_poll_us(location) if len(frame) == 0 and as_of is not None else None
    meta["warnings"] = report_warnings(frame, store_ids, first_poll_us)
    return meta


def report_timings(plan_s: float, shard_wall_s: float, write_s: float, results: list) -> dict[str, float]:
    """load: planning plus the shards' reads, compute: the rest of the shard phase (wall clock, shared out
    in the ratio of the shards' own read and compute seconds), write: merging and writing the CSV."""
    read_s, compute_s = sum(r[2] for r in results), sum(r[3] for r in results)
    load_share = read_s / (read_s + compute_s) if read_s + compute_s > 0 else 0.5
    timings = {"load": plan_s + shard_wall_s * load_share, "compute": shard_wall_s * (1 - load_share),
               "write": write_s}
    return {k: round(v, 4) for k, v in timings.items()}


def generate_report(location: str | Path, out_path: str | Path, *, as_of=None,
                    store_ids: Iterable[str] | None = None, extended: bool = False,
                    reach_minutes: int | None = DEFAULT_REACH_MINUTES, default_timezone: str = DEFAULT_TIMEZONE,
                    progress: Callable[[float], None] | None = None, shard_stores: int | None = None,
                    shard_polls: int | None = None, processes: int | None = None) -> ReportOutcome:
    """Read what the report needs, compute it and write `out_path` atomically (temporary file, rename).

    The stores are split into shards of at most `shard_stores` stores and about `shard_polls` polls in the
    week (defaults SHARD_STORES, SHARD_POLLS; the service passes SM_SHARD_STORES, SM_SHARD_POLLS); with more than one shard they are computed by `processes` worker processes (default
    REPORT_PROCESSES; the service passes SM_REPORT_PROCESSES; 0 = here, one after another). Every shard reports at the same `now`, resolved once
    here. Each shard reads its own snapshot: an ingestion committed while a report runs may be seen by some
    shards and not others (each store's figures are still from one consistent snapshot).

    In cluster mode (cluster.py) Celery workers run the same steps: `plan_report`, `_report_shard` per
    shard, then `_merge_shards`, `csv_bytes`, `report_meta` and `report_timings`.

    Raises ReportError when there is nothing to report on (no polls at all).
    """
    report = progress or (lambda fraction: None)
    started = time.perf_counter()
    store_ids = None if store_ids is None else list(store_ids)
    processes = REPORT_PROCESSES if processes is None else processes
    # At least one shard per process: every core gets a share even of a fleet smaller than SHARD_STORES
    # times the processes (measured at real size, 14,000 stores on 2 processes: 2 shards of 7,000 0.34 s,
    # 7 of 2,000 0.42 s, 4 of 3,500 0.36 s; at 10 polls an hour SHARD_POLLS binds: 1.29-1.34 s either way).
    now_us, shards = plan_report(location, shard_stores=shard_stores, shard_polls=shard_polls,
                                 min_shards=max(1, processes), as_of=as_of, store_ids=store_ids)
    planned = time.perf_counter()
    job = (str(location), now_us)
    options = (store_ids, reach_minutes, default_timezone, extended)
    if len(shards) == 1 or processes < 1:
        results = []
        for done, key_range in enumerate(shards, 1):
            results.append(_report_shard(*job, key_range, *options))
            report(0.9 * done / len(shards))
    else:
        pool = _shard_pool(processes)
        try:
            futures = [pool.submit(_report_shard, *job, key_range, *options) for key_range in shards]
            for done, _ in enumerate(as_completed(futures), 1):
                report(0.9 * done / len(shards))
            results = [future.result() for future in futures]
        except BrokenProcessPool:
            _discard_pool(pool)
            raise
    computed = time.perf_counter()
    frame = _merge_shards(results)
    write_csv_atomically(frame, Path(out_path))
    written = time.perf_counter()
    return ReportOutcome(rows=len(frame), as_of=pd.Timestamp(now_us, unit="us", tz="UTC"),
                         seconds=written - started,
                         timings=report_timings(planned - started, computed - planned, written - computed, results),
                         meta=report_meta(location, frame, store_ids, as_of))


WARNING_EXAMPLES = 5  # ids listed in a warning; the count says how many there are in all


def report_warnings(frame: pd.DataFrame, store_ids: Iterable[str] | None, first_poll_us: int | None) -> list[dict]:
    """What a user should know before trusting the report: each a code, a message and figures."""
    from jobs import iso_utc  # the service's one UTC formatter (jobs imports this module)

    warnings = []
    now = frame.attrs["now"]
    if store_ids is not None:
        missing = sorted(set(store_ids) - set(frame["store_id"]))
        if missing:
            warnings.append({
                "code": "store_ids_without_polls", "count": len(missing), "examples": missing[:WARNING_EXAMPLES],
                "message": f"{len(missing)} of the requested store_ids have no poll at or before {iso_utc(now)}; "
                           "they are not in the report"})
    if first_poll_us is not None and first_poll_us > int(now.as_unit("us").asm8.astype("int64")):
        first = pd.Timestamp(first_poll_us, unit="us", tz="UTC")
        warnings.append({
            "code": "as_of_before_first_poll", "first_poll": iso_utc(first),
            "message": f"as_of {iso_utc(now)} is earlier than every poll (the first is at {iso_utc(first)}); "
                       "the report is empty"})
    stale = frame.attrs.get("stores_without_polls_this_week", 0)
    if stale:
        warnings.append({
            "code": "stores_without_polls_this_week", "count": stale,
            "message": f"{stale} stores have no poll in the week before {iso_utc(now)}: their figures rest on "
                       "older polls" + (" (unbounded reach)" if frame.attrs.get("reach_minutes") is None
                                        else ", so they are mostly unknown")})
    return warnings


# What a spreadsheet may run as a formula at the start of a cell (OWASP, CSV injection); a minus before
# digits only is a negative number (the real data's ids are signed 64-bit integers), not a formula.
FORMULA_START_RE = re.compile(r"[=+@\t\r]|-(?![0-9]+\Z)")


def spreadsheet_safe(text: str) -> str:
    """A store id as a spreadsheet shows it, never as a formula: one that starts like a formula gets a
    leading apostrophe. The loader rejects such ids; this protects reports on ids stored before it did."""
    return "'" + text if FORMULA_START_RE.match(text) else text


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """A report's CSV file, byte for byte (UTF-8, CRLF line ends as the csv module writes them): the same
    bytes whether written here (write_csv_atomically) or kept in the database by a cluster worker."""
    out = io.StringIO(newline="")
    # The csv module over plain lists: ~5x faster than DataFrame.to_csv for the float columns,
    # and it quotes a store_id only when it must.
    writer = csv.writer(out)
    writer.writerow(frame.columns)
    columns = [frame[column].tolist() for column in frame.columns]
    columns[0] = [spreadsheet_safe(store_id) for store_id in columns[0]]
    writer.writerows(zip(*columns))
    return out.getvalue().encode("utf-8")


def write_bytes_atomically(body: bytes, path: Path) -> None:
    """Readers see the old file or the whole new one, never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(body)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_csv_atomically(frame: pd.DataFrame, path: Path) -> None:
    """Readers see the old file or the whole new one, never a partial CSV."""
    write_bytes_atomically(csv_bytes(frame), path)
