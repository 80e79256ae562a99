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
import os
import tempfile
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import pytz

from config import DEFAULT_TIMEZONE

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
        return values.cat.codes.to_numpy(np.int64), np.asarray(values.cat.categories, dtype=object).astype(str)
    codes, uniques = pd.factorize(values)
    return codes, np.asarray(uniques, dtype=object).astype(str)


def _lookup(per_unique: np.ndarray, codes: np.ndarray, missing) -> np.ndarray:
    """per_unique[codes], with `missing` where the code is -1."""
    return np.append(per_unique, missing)[codes]


def _parse_time_of_day(text: str) -> int:
    hours, minutes, seconds = text.strip().split(":")
    whole, _, fraction = seconds.partition(".")
    if not (len(hours) == len(minutes) == len(whole) == 2 and (hours + minutes + whole + fraction).isdigit()):
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
                        zone_of_code: np.ndarray, zones: np.ndarray, from_us: int, to_us: int):
    """UTC intervals (code, begin, end) of each row on every local date in [from_us, to_us].

    Rows are already normalised: `end_us` may exceed one day (overnight or 24-hour rows).
    """
    out_codes, out_begin, out_end = [], [], []
    row_zone = zone_of_code[codes]
    for zone_code in np.unique(row_zone):
        in_zone = np.flatnonzero(row_zone == zone_code)
        tz = pytz.timezone(zones[zone_code])
        first = pd.Timestamp(from_us, unit="us", tz="UTC").tz_convert(tz).date()
        last = pd.Timestamp(to_us, unit="us", tz="UTC").tz_convert(tz).date()
        dates = pd.date_range(first, last, freq="D")
        # Schedules repeat a few hundred distinct times of day: convert each (date, time) pair once.
        times, time_index = np.unique(np.concatenate([start_us[in_zone], end_us[in_zone]]), return_inverse=True)
        start_index, end_index = time_index[:len(in_zone)], time_index[len(in_zone):]
        midnights = dates.as_unit("us").asi8
        utc = _localize_earliest((midnights[:, None] + times[None, :]).ravel(), tz).reshape(len(dates), len(times))
        rows_of_weekday = [np.flatnonzero(day[in_zone] == weekday) for weekday in range(7)]
        for date_index, weekday in enumerate(dates.day_of_week):
            rows = rows_of_weekday[weekday]
            out_codes.append(codes[in_zone[rows]])
            out_begin.append(utc[date_index, start_index[rows]])
            out_end.append(utc[date_index, end_index[rows]])
    if not out_codes:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    return np.concatenate(out_codes), np.concatenate(out_begin), np.concatenate(out_end)


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
                   now=None, *, default_timezone: str = DEFAULT_TIMEZONE,
                   store_ids: Iterable[str] | None = None, extended: bool = False) -> pd.DataFrame:
    """The report rows for every store with a poll at or before `now`, sorted by store_id as text.

    polls: store_id, timestamp_utc (datetime64 or ISO text), status ('active'/'inactive').
    business_hours: store_id, day_of_week (0 = Monday), start_time_local, end_time_local ('HH:MM:SS[.f]').
    timezones: store_id, timezone_str.
    now: the reference time (UTC); default the latest poll. Polls after it are ignored.
    store_ids: report only these stores. extended: add the unknown_last_* columns.
    Metadata (the report's now, timezone counts) is returned in `frame.attrs`.
    """
    if default_timezone not in KNOWN_ZONES:
        raise ReportError(f"default timezone {default_timezone!r} is not in the tz database")
    p = _read_polls(polls, now, store_ids)
    zone_of_store, zones, n_missing_tz, n_unknown_tz = _resolve_timezones(p.stores, timezones, default_timezone)
    week_start = p.now_us - WEEK_US
    iv = _store_intervals(business_hours, p, zone_of_store, zones, week_start)
    p = _fold_stale_polls(p, iv.neg_inf)
    segments = _nearest_poll_segments(p, iv)

    n_stores = len(p.stores)
    has_evidence = np.zeros(len(iv.store), bool)
    has_evidence[segments.interval] = True
    no_evidence = ~has_evidence
    seg_store = iv.store[segments.interval]
    active_weight = segments.active.astype(np.float64)
    end_ticks = TICKS_PER_US * p.now_us
    result = {"store_id": p.stores}
    for name, length in WINDOWS:
        window_begin = TICKS_PER_US * (p.now_us - length)
        covered = _overlap(segments.begin, segments.end, window_begin, end_ticks)
        total = np.bincount(seg_store, weights=covered, minlength=n_stores)
        up = np.bincount(seg_store, weights=covered * active_weight, minlength=n_stores)
        unknown = np.bincount(iv.store[no_evidence], minlength=n_stores, weights=_overlap(
            TICKS_PER_US * iv.begin[no_evidence], TICKS_PER_US * iv.end[no_evidence], window_begin, end_ticks))
        unit = TICKS_PER_US * WINDOW_UNIT_US[name]
        result[f"uptime_last_{name}"] = _round_hundredths(up, unit)
        result[f"downtime_last_{name}"] = _round_hundredths(total - up, unit)
        result[f"unknown_last_{name}"] = _round_hundredths(unknown, unit)

    text_order = np.argsort(p.stores.to_numpy(dtype=str), kind="stable")
    frame = pd.DataFrame(result)[EXTENDED_COLUMNS if extended else STANDARD_COLUMNS]
    frame = frame.iloc[text_order].reset_index(drop=True)
    frame.attrs.update({
        "now": pd.Timestamp(p.now_us, unit="us", tz="UTC"),
        "stores": n_stores,
        "stores_without_timezone": n_missing_tz,
        "stores_with_unknown_timezone": n_unknown_tz,
        "default_timezone": default_timezone,
    })
    return frame


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


def _store_intervals(business_hours: pd.DataFrame, p: _Polls, zone_of_store: np.ndarray, zones: np.ndarray,
                     week_start: int) -> _Intervals:
    horizon = week_start - HORIZON_BEFORE_WEEK_US
    # Stand-ins for minus and plus infinity, outside every time the report looks at: generated intervals
    # begin at the earliest on the local midnight before `horizon`.
    neg_inf, pos_inf = horizon - 2 * US_PER_DAY, p.now_us + US_PER_DAY
    store, day, start_us, end_us = _schedule_rows(business_hours, p)
    # Open 24/7: stores without (readable) business hours, and those whose hours cover the whole week.
    always_open = np.ones(len(p.stores), bool)
    always_open[store] = False
    always_open |= _covers_whole_week(store, day, start_us, end_us, len(p.stores))
    rows = ~always_open[store]
    iv_store, iv_begin, iv_end = _business_intervals(store[rows], day[rows], start_us[rows], end_us[rows],
                                                     zone_of_store, zones, horizon, p.now_us + US_PER_DAY)
    iv_store, iv_begin, iv_end = _merge_intervals(iv_store, iv_begin, iv_end)
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


def _schedule_rows(business_hours: pd.DataFrame, p: _Polls):
    """Readable hours rows of reported stores: (store, weekday, start, end) in microseconds after local
    midnight, with `end` past 24 h for rows that close on the next local day."""
    hours = business_hours if len(business_hours) else pd.DataFrame(
        {"store_id": [], "day_of_week": [], "start_time_local": [], "end_time_local": []}, dtype=object)
    codes, store_texts = _factorize(hours["store_id"])
    input_position = _lookup(p.input_index.get_indexer(store_texts), codes, -1)
    store = np.where(input_position >= 0, p.number_of_input[input_position], -1)
    day = pd.to_numeric(hours["day_of_week"], errors="coerce").to_numpy(dtype=float)
    start_us = _time_of_day_us(hours["start_time_local"])
    end_us = _time_of_day_us(hours["end_time_local"])
    # Rows the loader would reject count as absent (a store left without rows is open 24/7).
    valid = (store >= 0) & np.isin(day, np.arange(7)) & (start_us >= 0) & (end_us >= 0)
    store, day, start_us, end_us = store[valid], day[valid].astype(np.int64), start_us[valid], end_us[valid]
    # '23:59:59' (with or without fraction) means midnight at the end of the day.
    end_us = np.where(end_us // US_PER_SECOND == US_PER_DAY // US_PER_SECOND - 1, US_PER_DAY, end_us)
    # end <= start: the interval ends on the next local day (start == end: open 24 hours).
    end_us = np.where(end_us <= start_us, end_us + US_PER_DAY, end_us)
    return store, day, start_us, end_us


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
    return replace(p, store=p.store[keep], t_us=np.maximum(p.t_us[keep], neg_inf), active=p.active[keep])


@dataclass
class _Segments:
    """Each evidence poll owns [begin, end) in ticks, within its business interval `interval`."""
    interval: np.ndarray
    begin: np.ndarray
    end: np.ndarray
    active: np.ndarray


def _nearest_poll_segments(p: _Polls, iv: _Intervals) -> _Segments:
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
    return _Segments(g, begin, end, active)


def _overlap(begin: np.ndarray, end: np.ndarray, window_begin: int, window_end: int) -> np.ndarray:
    """Length of [begin, end) inside [window_begin, window_end), as float64 weights for bincount."""
    return np.clip(np.minimum(end, window_end) - np.maximum(begin, window_begin), 0, None).astype(np.float64)


# --- from the database to a CSV file ---------------------------------------------------------------------

def generate_report(database_path: str | Path, out_path: str | Path, *, as_of=None,
                    store_ids: Iterable[str] | None = None, extended: bool = False,
                    default_timezone: str = DEFAULT_TIMEZONE,
                    progress: Callable[[float], None] | None = None) -> ReportOutcome:
    """Read what the report needs, compute it and write `out_path` atomically (temporary file, rename).

    Raises ReportError when there is nothing to report on (no polls at all).
    """
    import database  # the storage layer; imported here so the engine above stays free of it

    report = progress or (lambda fraction: None)
    started = time.perf_counter()
    inputs = database.read_report_inputs(database_path, lookback_us=WEEK_US,
                                         as_of_us=None if as_of is None else _to_utc_us(as_of),
                                         store_ids=None if store_ids is None else list(store_ids))
    if inputs.now is None:
        raise ReportError("no polls have been loaded yet: load store_status data first")
    loaded = time.perf_counter()
    report(0.5)
    frame = compute_report(inputs.polls, inputs.business_hours, inputs.timezones, inputs.now,
                           default_timezone=default_timezone, store_ids=store_ids, extended=extended)
    computed = time.perf_counter()
    report(0.9)
    write_csv_atomically(frame, Path(out_path))
    written = time.perf_counter()
    timings = {"load": loaded - started, "compute": computed - loaded, "write": written - computed}
    meta = {key: value for key, value in frame.attrs.items() if key != "now"}  # `now` is as_of
    return ReportOutcome(rows=len(frame), as_of=inputs.now, seconds=written - started,
                         timings={k: round(v, 4) for k, v in timings.items()}, meta=meta)


def write_csv_atomically(frame: pd.DataFrame, path: Path) -> None:
    """Readers see the old file or the whole new one, never a partial CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="") as out:
            # The csv module over plain lists: ~5x faster than DataFrame.to_csv for the float columns,
            # and it quotes a store_id only when it must.
            writer = csv.writer(out)
            writer.writerow(frame.columns)
            writer.writerows(zip(*(frame[column].tolist() for column in frame.columns)))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
