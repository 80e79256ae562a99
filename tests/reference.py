"""A plain, obviously-correct implementation of docs/report-semantics.md, for checking the engine.

Standard library only (zoneinfo for time zones, so the engine's pandas/pytz conversions are checked
against an independent implementation). One store at a time, one local date and one interval at a time,
over the store's whole history. Slow by design; clarity is the point.

Times are integer microseconds since the epoch; segment bounds are in half microseconds ("ticks") so
midpoints between two polls stay exact, as in the engine.
"""
from __future__ import annotations

import math
import re
from datetime import date, datetime, time, timedelta, timezone
from fractions import Fraction
from zoneinfo import ZoneInfo, available_timezones

UTC = timezone.utc
US = 1_000_000
MINUTE = 60 * US
HOUR = 3600 * US
DAY = 24 * HOUR
DEFAULT_REACH_US = 120 * MINUTE  # the contract's default reach; None means unbounded
KNOWN_ZONES = available_timezones()
WINDOWS = {"hour": HOUR, "day": DAY, "week": 7 * DAY}
UNITS = {"hour": 60 * US, "day": HOUR, "week": HOUR}  # minutes, hours, hours
WHOLE_DAY = (timedelta(0), timedelta(days=1))  # 00:00-24:00 as a span from local midnight

TIME_TEXT = re.compile(r"(\d{1,2}):(\d{2}):(\d{2})(\.\d{1,6})?")
DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}")


def round_half_up(value: Fraction) -> float:
    """The semantics page's "rounded to 2 decimals", exactly: half a hundredth rounds up."""
    return math.floor(value * 100 + Fraction(1, 2)) / 100


def to_us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


def from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def resolve_zone(zone_name: str | None, default_zone: str = "America/Chicago") -> ZoneInfo:
    """The store's zone: surrounding spaces ignored; missing, empty or unknown -> the default."""
    name = (zone_name or "").strip()
    return ZoneInfo(name if name in KNOWN_ZONES else default_zone)


def parse_time_of_day(text: str) -> timedelta:
    hours, minutes, seconds = text.strip().split(":")
    whole, _, fraction = seconds.partition(".")
    return timedelta(hours=int(hours), minutes=int(minutes), seconds=int(whole),
                     microseconds=int((fraction + "000000")[:6]) if fraction else 0)


def row_span(start_text: str, end_text: str) -> tuple[timedelta, timedelta]:
    """One hours row (weekly or special) as (start, end) offsets from the local midnight of its date.

    `end` of 23:59:59 (any fraction) is the midnight ending the date; `end <= start` runs into the next
    date, which also makes `start == end` a 24-hour opening.
    """
    start = parse_time_of_day(start_text)
    if end_text.strip().startswith("23:59:59"):
        end = timedelta(days=1)
    else:
        end = parse_time_of_day(end_text)
    if end <= start:
        end += timedelta(days=1)
    return start, end


# --- special hours rows: which ones count ---------------------------------------------------------------

def is_blank(value) -> bool:
    return value is None or str(value).strip() == ""


def is_valid_time(text) -> bool:
    """A time of day 00:00:00 .. 23:59:59 (optional fraction); anything else rejects the row."""
    found = TIME_TEXT.fullmatch(str(text).strip())
    return bool(found) and int(found[1]) <= 23 and int(found[2]) <= 59 and int(found[3]) <= 59


def parse_date(text) -> date | None:
    """A real calendar date written YYYY-MM-DD, or None (2023-02-30 is not a date)."""
    if text is None or not DATE_TEXT.fullmatch(str(text).strip()):
        return None
    try:
        return date.fromisoformat(str(text).strip())
    except ValueError:
        return None


def read_special_rows(special) -> dict:
    """{store_id: {local date: [span, ...]}} from (store_id, date, start, end) rows.

    A closed row (both times blank) is recorded as the span None: it makes its date special (so the
    weekday's rows no longer apply) but opens nothing. A rejected row (blank store_id, bad date, bad time,
    exactly one time blank) is dropped entirely, as if absent: it does not make its date special.
    """
    by_store: dict = {}
    for store, date_text, start, end in special:
        day = parse_date(date_text)
        if is_blank(store) or day is None:
            continue
        if is_blank(start) and is_blank(end):
            span = None
        elif is_blank(start) or is_blank(end) or not (is_valid_time(start) and is_valid_time(end)):
            continue
        else:
            span = row_span(start, end)
        by_store.setdefault(store, {}).setdefault(day, []).append(span)
    return by_store


# --- business intervals ---------------------------------------------------------------------------------

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


def spans_starting_on(day: date, weekly_rows, special_by_date) -> list:
    """The local (start, end) spans of the intervals that START on local date `day`.

    A date with special rows takes exactly its special rows (closed rows add nothing); otherwise the
    weekday's weekly rows; a store with no weekly rows is open the whole date. Intervals that started on
    the previous date are that date's business, so an overnight opening still runs into `day`.
    """
    if day in special_by_date:
        return [span for span in special_by_date[day] if span is not None]
    if not weekly_rows:
        return [WHOLE_DAY]
    return [row_span(start, end) for weekday, start, end in weekly_rows if weekday == day.weekday()]


def business_intervals(weekly_rows, special_by_date, zone: ZoneInfo, first_day: date, last_day: date):
    """Merged UTC intervals [begin, end) in microseconds, from the openings of local dates first..last.

    weekly_rows: [(day_of_week, start_text, end_text)]; special_by_date: {date: [span or None]}.
    """
    raw = []
    day = first_day
    while day <= last_day:
        midnight = datetime.combine(day, time())
        for start, end in spans_starting_on(day, weekly_rows, special_by_date):
            begin_us = local_to_utc_us(midnight + start, zone)
            end_us = local_to_utc_us(midnight + end, zone)
            if end_us > begin_us:  # a span inside a DST gap can vanish altogether
                raw.append([begin_us, end_us])
        day += timedelta(days=1)
    raw.sort()
    merged = []
    for begin, end in raw:
        if merged and begin <= merged[-1][1]:  # overlapping or touching: one interval
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([begin, end])
    return merged


# --- interpolation --------------------------------------------------------------------------------------

def interval_pieces(begin_us: int, end_us: int, evidence, status_of, reach_us: int | None):
    """[(lo, hi, kind)] in ticks covering [begin, end) exactly; kind is "up", "down" or "unknown".

    Each poll owns the instants nearer to it than to any other poll of the interval (cells split at
    midpoints; the first cell reaches back to `begin`, the last forward to `end`). Of its cell, only the
    part within `reach` of the poll is known; the rest of the cell is unknown.
    """
    if not evidence:
        return [(2 * begin_us, 2 * end_us, "unknown")]
    pieces = []
    for i, t in enumerate(evidence):
        cell_lo = 2 * begin_us if i == 0 else evidence[i - 1] + t
        cell_hi = 2 * end_us if i == len(evidence) - 1 else t + evidence[i + 1]
        if reach_us is None:
            known_lo, known_hi = cell_lo, cell_hi
        else:  # cell_lo <= 2t <= cell_hi, so cell_lo <= known_lo <= known_hi <= cell_hi
            known_lo, known_hi = max(cell_lo, 2 * (t - reach_us)), min(cell_hi, 2 * (t + reach_us))
        kind = "up" if status_of[t] == "active" else "down"
        pieces += [(cell_lo, known_lo, "unknown"), (known_lo, known_hi, kind), (known_hi, cell_hi, "unknown")]
    pieces = [piece for piece in pieces if piece[1] > piece[0]]
    assert sum(hi - lo for lo, hi, _ in pieces) == 2 * (end_us - begin_us)  # an exact partition
    return pieces


def store_report(polls, rows, zone_name: str | None, now_us: int, default_zone: str = "America/Chicago",
                 special_by_date=None, reach_us: int | None = DEFAULT_REACH_US):
    """Uptime, downtime, unknown per window for one store, in half-microsecond ticks.

    polls: list of (timestamp_us, status); rows: list of (day_of_week, start_text, end_text);
    special_by_date: {local date: [span or None]} of the store's valid special rows (read_special_rows).
    """
    zone = resolve_zone(zone_name, default_zone)
    special_by_date = special_by_date or {}
    # Polls after now are ignored. One status per instant; inactive wins.
    status_of = {}
    for t, status in polls:
        if t <= now_us:
            status_of[t] = "inactive" if status_of.get(t) == "inactive" else status
    instants = sorted(status_of)
    # Local dates whose openings can matter: from three days before both the earliest poll and the week
    # window (an opening runs at most two dates: start on D, end before D+2 00:00) to two days after now.
    # Openings before first_day could only move the begin of the first merged interval further back; but
    # that begin is already earlier than every poll and every window, so no evidence and no window changes.
    # Likewise openings after last_day start after now. Special rows on other dates are thus irrelevant.
    earliest = min(instants[0] if instants else now_us, now_us - 7 * DAY)
    first_day = (from_us(earliest).astimezone(zone) - timedelta(days=3)).date()
    last_day = (from_us(now_us).astimezone(zone) + timedelta(days=2)).date()
    totals = {kind: {w: 0 for w in WINDOWS} for kind in ("up", "down", "unknown")}
    for begin, end in business_intervals(rows, special_by_date, zone, first_day, last_day):
        # Evidence is every poll inside the interval (t < its true end, so a poll at now counts even in an
        # interval running past now); statuses hold up to its end but never past now.
        evidence = [t for t in instants if begin <= t < end]
        end = min(end, now_us)
        if begin >= end:
            continue
        for lo, hi, kind in interval_pieces(begin, end, evidence, status_of, reach_us):
            for window, length in WINDOWS.items():
                overlap = min(hi, 2 * now_us) - max(lo, 2 * (now_us - length))
                if overlap > 0:
                    totals[kind][window] += overlap
    return totals


def report(polls, hours, zones, now_us: int | None = None, default_zone: str = "America/Chicago",
           special=(), reach_us: int | None = DEFAULT_REACH_US):
    """Rows of the standard+unknown output, as dicts keyed like the CSV columns, sorted by store_id.

    polls: list of (store_id, timestamp_us, status); hours: list of (store_id, day, start, end);
    zones: dict store_id -> timezone_str; special: list of (store_id, 'YYYY-MM-DD', start, end) with
    start/end '' or None for a closed row (invalid rows are ignored); reach_us: how far a poll speaks on
    either side, in microseconds; None = unbounded.
    """
    if now_us is None:
        now_us = max(t for _, t, _ in polls)
    by_store = {}
    for store, t, status in polls:
        by_store.setdefault(store, []).append((t, status))
    rows_by_store = {}
    for store, day, start, end in hours:
        rows_by_store.setdefault(store, []).append((day, start, end))
    special_by_store = read_special_rows(special)
    out = []
    for store in sorted(by_store):
        if not any(t <= now_us for t, _ in by_store[store]):
            continue
        totals = store_report(by_store[store], rows_by_store.get(store, []), zones.get(store), now_us,
                              default_zone, special_by_store.get(store), reach_us)
        row = {"store_id": store}
        for kind, prefix in (("up", "uptime"), ("down", "downtime"), ("unknown", "unknown")):
            for window in WINDOWS:
                row[f"{prefix}_last_{window}"] = round_half_up(Fraction(totals[kind][window], 2 * UNITS[window]))
        out.append(row)
    return out
