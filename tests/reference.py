"""A plain, obviously-correct implementation of docs/report-semantics.md, for checking the engine.

Standard library only (zoneinfo for time zones, so the engine's pandas/pytz conversions are checked
against an independent implementation). One store at a time, one interval at a time, over the store's
whole history. Slow by design; clarity is the point.

Times are integer microseconds since the epoch; segment bounds are in half microseconds so midpoints
stay exact, as in the engine.
"""
from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta, timezone
from fractions import Fraction
from zoneinfo import ZoneInfo, available_timezones

UTC = timezone.utc
US = 1_000_000
HOUR = 3600 * US
DAY = 24 * HOUR
KNOWN_ZONES = available_timezones()
WINDOWS = {"hour": HOUR, "day": DAY, "week": 7 * DAY}
UNITS = {"hour": 60 * US, "day": HOUR, "week": HOUR}  # minutes, hours, hours


def round_half_up(value: Fraction) -> float:
    """The semantics page's "rounded to 2 decimals", exactly: half a hundredth rounds up."""
    return math.floor(value * 100 + Fraction(1, 2)) / 100


def to_us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


def from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def parse_time_of_day(text: str) -> timedelta:
    hours, minutes, seconds = text.strip().split(":")
    whole, _, fraction = seconds.partition(".")
    return timedelta(hours=int(hours), minutes=int(minutes), seconds=int(whole),
                     microseconds=int((fraction + "000000")[:6]) if fraction else 0)


def local_to_utc_us(local: datetime, zone: ZoneInfo) -> int:
    """Local wall-clock time -> UTC: the earlier instant when ambiguous, the transition when skipped."""
    earlier = local.replace(tzinfo=zone, fold=0)
    later = local.replace(tzinfo=zone, fold=1)
    candidates = [c for c in (earlier, later) if c.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == local]
    if candidates:
        return min(to_us(c) for c in candidates)
    # In a gap: find the transition instant by bisection between the two readings (whole seconds).
    low, high = sorted((to_us(earlier), to_us(later)))
    offset_before = from_us(low - US).astimezone(zone).utcoffset()
    low_s, high_s = low // US - 1, high // US + 1
    while high_s - low_s > 1:
        mid = (low_s + high_s) // 2
        if from_us(mid * US).astimezone(zone).utcoffset() == offset_before:
            low_s = mid
        else:
            high_s = mid
    return high_s * US


def business_intervals(rows, zone: ZoneInfo, first_day: date, last_day: date):
    """Merged UTC intervals [begin, end) in microseconds for the schedule rows over local dates."""
    raw = []
    day = first_day
    while day <= last_day:
        for weekday, start_text, end_text in rows:
            if weekday != day.weekday():
                continue
            start = parse_time_of_day(start_text)
            if end_text.strip().startswith("23:59:59"):
                end = timedelta(days=1)
            else:
                end = parse_time_of_day(end_text)
            if end <= start:
                end += timedelta(days=1)
            midnight = datetime.combine(day, time())
            begin_us = local_to_utc_us(midnight + start, zone)
            end_us = local_to_utc_us(midnight + end, zone)
            if end_us > begin_us:
                raw.append([begin_us, end_us])
        day += timedelta(days=1)
    raw.sort()
    merged = []
    for begin, end in raw:
        if merged and begin <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([begin, end])
    return merged


def store_report(polls, rows, zone_name: str | None, now_us: int, default_zone: str = "America/Chicago"):
    """Uptime, downtime, unknown per window for one store, in half-microsecond ticks.

    polls: list of (timestamp_us, status); rows: list of (day_of_week, start_text, end_text).
    """
    name = (zone_name or "").strip()
    zone = ZoneInfo(name if name in KNOWN_ZONES else default_zone)
    # Deduplicate: one status per instant, inactive wins.
    by_instant = {}
    for t, status in polls:
        if t <= now_us:
            by_instant[t] = "inactive" if by_instant.get(t) == "inactive" else status
    instants = sorted(by_instant)
    if rows:
        earliest = min(instants[0] if instants else now_us, now_us - 7 * DAY)
        first_day = (from_us(earliest).astimezone(zone) - timedelta(days=3)).date()
        last_day = (from_us(now_us).astimezone(zone) + timedelta(days=2)).date()
        intervals = business_intervals(rows, zone, first_day, last_day)
    else:
        intervals = [[None, None]]  # open 24/7: no begin, no end
    totals = {kind: {w: 0 for w in WINDOWS} for kind in ("up", "down", "unknown")}
    for begin, end in intervals:
        # Evidence is every poll inside the interval; statuses hold up to its end but never past now.
        evidence = [t for t in instants if (begin is None or t >= begin) and (end is None or t < end)]
        end = now_us if end is None else min(end, now_us)
        if begin is not None and begin >= end:
            continue
        if not evidence:
            pieces = [(2 * begin if begin is not None else None, 2 * end, "unknown")]
        else:
            pieces = []
            for i, t in enumerate(evidence):
                seg_begin = (2 * begin if begin is not None else None) if i == 0 else evidence[i - 1] + t
                seg_end = 2 * end if i == len(evidence) - 1 else t + evidence[i + 1]
                pieces.append((seg_begin, seg_end, "up" if by_instant[t] == "active" else "down"))
        for window, length in WINDOWS.items():
            w_begin, w_end = 2 * (now_us - length), 2 * now_us
            for seg_begin, seg_end, kind in pieces:
                lo = w_begin if seg_begin is None else max(seg_begin, w_begin)
                hi = min(seg_end, w_end)
                if hi > lo:
                    totals[kind][window] += hi - lo
    return totals


def report(polls, hours, zones, now_us: int | None = None, default_zone: str = "America/Chicago"):
    """Rows of the standard+unknown output, as dicts keyed like the CSV columns, sorted by store_id.

    polls: list of (store_id, timestamp_us, status); hours: list of (store_id, day, start, end);
    zones: dict store_id -> timezone_str.
    """
    if now_us is None:
        now_us = max(t for _, t, _ in polls)
    by_store = {}
    for store, t, status in polls:
        by_store.setdefault(store, []).append((t, status))
    rows_by_store = {}
    for store, day, start, end in hours:
        rows_by_store.setdefault(store, []).append((day, start, end))
    out = []
    for store in sorted(by_store):
        if not any(t <= now_us for t, _ in by_store[store]):
            continue
        totals = store_report(by_store[store], rows_by_store.get(store, []), zones.get(store), now_us, default_zone)
        row = {"store_id": store}
        for kind, prefix in (("up", "uptime"), ("down", "downtime"), ("unknown", "unknown")):
            for window in WINDOWS:
                row[f"{prefix}_last_{window}"] = round_half_up(Fraction(totals[kind][window], 2 * UNITS[window]))
        out.append(row)
    return out
