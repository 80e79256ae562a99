"""Deterministic generator of realistic store-monitoring data in the real (Loop) file formats.

    python sample_data.py --out data/generated --stores 14000 --days 8 --seed 0
    python sample_data.py --out /tmp/x --stores 300 --id-style uuid

Writes three files that are byte-compatible with the published exports (see
`../shared/data/loop-sample/SOURCE.md`):

- `store_status.csv`  `store_id,status,timestamp_utc`, e.g.
  `8419537941919820732,active,2023-01-22 12:09:39.388884 UTC`; the fraction has 2-6 digits with trailing
  zeros trimmed (rarely none); rows are shuffled like the real export.
- `business_hours.csv` `store_id,day,start_time_local,end_time_local` (`dayOfWeek` in the uuid edition),
  times `HH:MM:SS`, day 0 = Monday; rows grouped by store, stores in random order.
- `timezones.csv`     `store_id,timezone_str`.

Two editions: `id_style="int64"` (2023: 19-digit-ish non-negative signed 64-bit ids, uniform in
[0, 2**63) like the real ones, header `day`, default end 2023-01-25 18:13:22 UTC, trailing newlines) and
`id_style="uuid"` (2024/25: UUID4 ids, header `dayOfWeek`, default end 2024-10-03 23:55:02 UTC, and - like
the published 2024 files - no trailing newline in business_hours.csv and timezones.csv).

What the data looks like (all drawn from one seeded numpy Generator, so a seed gives identical bytes):

- Polls: every store is polled once an hour at its own minute (the collector walks the stores over the
  hour) with a few minutes of jitter (σ 60 s, clipped to ±5 min, 2 % of polls 5-15 min late). Each store
  misses ~21 % of its polls on average (per-store rate 5-45 %). Like the real 2023 export (no polls on
  2023-01-23), the collector is down for one whole UTC day: the calendar day two days before `end`'s date,
  when the history is long enough to contain it. Status is a two-state Markov chain per store: inactive
  share per store from Beta(1.2, 12) (mean ~9 %, a few percent to ~25 %, clipped at 60 %), outages as runs of
  consecutive inactive hours (mean run 1.5-6 h per store). A handful of duplicate polls (same store, same
  second) appear, as in the real data.
- Business hours: ~18 % of polled stores have no rows (open 24/7). The others follow one archetype: all day
  (`00:00:00-23:59:00` or `00:00:00-23:59:59`), regular (e.g. 11:00-22:00), late night split at midnight as
  in the real files (`00:00:00-02:00:00` + `11:00:00-23:59:59`), split shifts (2-4 intervals a day),
  overnight single rows (`18:00:00-02:00:00`, end < start) and tiny windows (`00:00:00-00:01:00`).
  81 % of these stores list all 7 days; the rest miss some weekdays.
- Timezones: US zones in the real proportions (New_York, Los_Angeles, Chicago, Phoenix, Denver, Detroit,
  Boise, Indiana/Indianapolis, Edmonton, Pacific/Honolulu) plus a few Asia/Beirut; ~5 % of polled stores
  have no row. About 1.5 % extra stores appear only in the hours/timezone files (never polled), as stores
  do in the real files.

Size: `stores=14000, days=8` gives ~1.85M polls, ~86k business-hours rows, ~13.5k timezone rows.

`poll_scale=K` makes the poll history K times longer (K * days of hourly polls for the same stores and the
same business hours/timezones): data keeps arriving hourly, so a longer history is how a real database
grows. The benchmark's `--scale 10` uses it; the collector-outage day stays a single day (so K=10 gives
~11x the polls of K=1). `polls_per_hour=K` instead polls K times an hour (K times the polls inside every
report window; the benchmark's `--scale-mode density`).
"""
from __future__ import annotations

import argparse
import bisect
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["generate_dataset", "main", "DEFAULT_END", "TIMEZONE_WEIGHTS"]

DEFAULT_END = {
    "int64": datetime(2023, 1, 25, 18, 13, 22, tzinfo=timezone.utc),
    "uuid": datetime(2024, 10, 3, 23, 55, 2, tzinfo=timezone.utc),
}
DAY_HEADER = {"int64": "day", "uuid": "dayOfWeek"}

# Real 2023 proportions (timezones.csv), with the rare zones made a little more common so that a
# few-hundred-store demo set still contains some of them.
TIMEZONE_WEIGHTS = {
    "America/New_York": 0.580,
    "America/Los_Angeles": 0.235,
    "America/Chicago": 0.110,
    "America/Phoenix": 0.030,
    "America/Denver": 0.012,
    "America/Detroit": 0.010,
    "America/Boise": 0.005,
    "America/Indiana/Indianapolis": 0.005,
    "Pacific/Honolulu": 0.005,
    "America/Edmonton": 0.003,
    "Asia/Beirut": 0.005,
}

NO_HOURS_SHARE = 0.18        # polled stores without any business-hours row
NO_TIMEZONE_SHARE = 0.05     # polled stores without a timezone row
UNPOLLED_SHARE = 0.015       # extra stores only in business_hours/timezones
SPECIAL_HOURS_SHARE = 0.2     # stores with special hours (a holiday, maybe a short day) in the last week
MISS_RATE_BETA = (4.2, 15.8)  # per-store missed-poll rate, mean 0.21
INACTIVE_BETA = (1.2, 12.0)   # per-store inactive share, mean ~0.09
CHUNK_ROWS = 1_000_000        # rows formatted and written at a time

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US


# --- business hours ---------------------------------------------------------------------------------

def _t(h: float) -> str:
    """Hours since midnight -> 'HH:MM:SS' (whole minutes)."""
    minutes = int(round(h * 60))
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


_CUMULATIVE: dict[tuple, list[float]] = {}


def _pick(rng: np.random.Generator, values, weights=None):
    """One of `values` (uniform, or with the given relative weights); one draw from `rng` either way."""
    if weights is None:
        return values[int(rng.integers(len(values)))]
    key = tuple(weights)
    cum = _CUMULATIVE.get(key)
    if cum is None:
        cum = _CUMULATIVE[key] = np.cumsum(weights).tolist()
    x = rng.random() * cum[-1]
    return values[min(bisect.bisect_right(cum, x), len(values) - 1)]


_REG_STARTS = [11, 10, 6, 7, 8, 10.5, 12, 11.5, 9, 6.5, 7.5, 16, 17]
_REG_START_W = [35, 12, 10, 8, 6, 5, 5, 5, 5, 2, 2, 2, 3]
_REG_ENDS = [23, 21, 22, 20.5, 21.5, 20, 19, 22.5, 23.5, 20.75, 21.75, 23.75, "23:59:00", "23:59:59", 18, 15]
_REG_END_W = [14, 14, 12, 8, 7, 7, 5, 4, 3, 3, 3, 2, 6, 5, 3, 2]


def _store_hours(rng: np.random.Generator) -> list[tuple[int, str, str]]:
    """(day, start, end) rows for one store that has business hours."""
    kind = _pick(rng, ["allday", "allday59", "regular", "latenight", "split", "overnight", "tiny"],
                 [13, 6, 65.5, 6, 4.5, 3, 2])
    # Which weekdays are listed: all 7 for 81 %, else some missing (mostly Sunday/Monday first).
    n_days = _pick(rng, [7, 6, 5, 4, 3, 2, 1], [81, 13, 3.5, 0.5, 0.3, 0.2, 1.5])
    if n_days == 7:
        days = list(range(7))
    elif n_days >= 5 and rng.random() < 0.7:
        days = [d for d in range(7) if d not in (6, 0)[: 7 - n_days]]
    else:
        days = sorted(rng.choice(7, size=n_days, replace=False).tolist())
    weekend_later = rng.random() < 0.35      # Fri/Sat open an hour longer, Sun opens an hour later

    def day_rows(d: int) -> list[tuple[str, str]]:
        if kind == "allday":
            return [("00:00:00", "23:59:00")]
        if kind == "allday59":
            return [("00:00:00", "23:59:59")]
        if kind == "tiny":
            return [("00:00:00", _pick(rng, ["00:01:00", "00:10:00"]))]
        if kind == "overnight":
            start = _pick(rng, [18, 20, 22, 17], [4, 3, 2, 1])
            end = _pick(rng, [2, 1, 3, 4, 0.5], [4, 2, 2, 1, 1])
            return [(_t(start), _t(end))]
        if kind == "latenight":
            # The real files split late hours at midnight: 00:00-02:00 continues the previous evening.
            tail = _pick(rng, [1, 2, 3, 1.5, 4, 1.75, 2.5], [26, 23, 10, 5, 5, 4, 4])
            start = _pick(rng, [11, 7, 6, 8, 10], [5, 3, 2, 2, 2])
            return [("00:00:00", _t(tail)), (_t(start), "23:59:59")]
        if kind == "split":
            n = _pick(rng, [2, 3, 4], [90, 7, 3])
            if n == 2:
                return [(_t(_pick(rng, [11, 11.5, 12])), _t(_pick(rng, [14, 14.5, 15]))),
                        (_t(_pick(rng, [16, 17, 17.5])), _t(_pick(rng, [21, 22, 22.5])))]
            shifts = [("06:00:00", "10:00:00"), ("11:00:00", "14:30:00"), ("17:00:00", "21:30:00"),
                      ("22:00:00", "23:59:59")]
            return shifts[:n]
        # regular: one template per store, with weekend variation
        start, end = regular
        if isinstance(end, str):
            return [(_t(start), end)]
        if weekend_later and d in (4, 5):
            end = min(end + 1, 23.75)
        if weekend_later and d == 6:
            start = min(start + 1, end - 1)
        return [(_t(start), _t(end))]

    if kind == "regular":
        regular = (_pick(rng, _REG_STARTS, _REG_START_W), _pick(rng, _REG_ENDS, _REG_END_W))
        if not isinstance(regular[1], str) and regular[1] < regular[0] + 4:
            regular = (regular[0], min(regular[0] + 6, 23.75))   # afternoon openers close late
        rows = [(d, s, e) for d in days for s, e in day_rows(d)]
    else:
        template = day_rows(0)
        rows = [(d, s, e) for d in days for s, e in template]
    order = rng.permutation(len(rows))       # the real files list a store's days in no order
    return [rows[i] for i in order]


# --- ids --------------------------------------------------------------------------------------------

def _store_ids(rng: np.random.Generator, n: int, id_style: str) -> list[str]:
    if id_style == "int64":
        ids = rng.integers(0, 2**63 - 1, size=n * 2, dtype=np.int64, endpoint=True)
        ids = list(dict.fromkeys(ids.tolist()))[:n]   # unique, order kept
        return [str(v) for v in ids]
    raw = rng.bytes(16 * n)
    return [str(uuid.UUID(bytes=raw[16 * i:16 * i + 16], version=4)) for i in range(n)]


# --- polls ------------------------------------------------------------------------------------------

def _polls(rng: np.random.Generator, n_stores: int, start_us: int, end_us: int, per_hour: int = 1):
    """(store_index, timestamp_us, active) arrays, unsorted. Vectorised over stores x poll slots."""
    slot_us = HOUR_US // per_hour
    first_hour = start_us - start_us % slot_us
    n_slots = int((end_us - first_hour) // slot_us) + 1
    offset = rng.integers(0, slot_us, size=n_stores)                    # the store's minute in the slot
    miss_rate = np.clip(rng.beta(*MISS_RATE_BETA, size=n_stores), 0.05, 0.45)
    inactive_share = np.clip(rng.beta(*INACTIVE_BETA, size=n_stores), 0.0, 0.6)
    run_len = rng.uniform(1.5, 6.0, size=n_stores)                      # mean outage length, hours
    to_active = 1.0 / run_len / per_hour
    to_inactive = inactive_share * to_active / (1.0 - inactive_share)

    # Status: a Markov chain per store, stepped hourly (a loop over hours, vectorised over stores).
    active = np.empty((n_slots, n_stores), dtype=np.int8)
    state = rng.random(n_stores) >= inactive_share                     # stationary start
    u = rng.random((n_slots, n_stores), dtype=np.float32)
    for k in range(n_slots):
        state = np.where(state, u[k] >= to_inactive, u[k] < to_active)
        active[k] = state
    del u

    jitter = np.clip(rng.normal(0.0, 60e6 / per_hour, size=(n_slots, n_stores)),
                     -300e6 / per_hour, 300e6 / per_hour).astype(np.int64)
    late = rng.random((n_slots, n_stores), dtype=np.float32) < 0.02
    jitter[late] += rng.integers(300_000_000 // per_hour, 900_000_000 // per_hour, size=int(late.sum()))
    del late
    ts = first_hour + np.arange(n_slots, dtype=np.int64)[:, None] * slot_us + offset[None, :] + jitter
    del jitter
    keep = rng.random((n_slots, n_stores), dtype=np.float32) >= miss_rate[None, :].astype(np.float32)
    keep &= (ts >= start_us) & (ts < end_us)

    # The collector-outage day (the real 2023 export has no polls on 2023-01-23).
    gap_start = (end_us - end_us % DAY_US) - 2 * DAY_US
    if gap_start - start_us >= DAY_US:
        keep &= ~((ts >= gap_start) & (ts < gap_start + DAY_US))

    slot_idx, store_idx = np.nonzero(keep)
    return store_idx.astype(np.int32), ts[slot_idx, store_idx], active[slot_idx, store_idx]


def _format_status_chunk(ids: pa.Array, store_idx, ts_us, active) -> pa.Buffer:
    secs = ts_us // 1_000_000
    micros = ts_us % 1_000_000
    # 'YYYY-MM-DD HH:MM:SS' from two lookup tables (dates in the chunk, 86,400 clock times): much faster
    # than pc.strftime.
    day = secs // 86_400
    first_day = int(day.min()) if len(day) else 0
    dates = np.arange(first_day, int(day.max()) + 1 if len(day) else 1).astype("datetime64[D]").astype(str)
    date = pc.take(pa.array([d + " " for d in dates]), pa.array(day - first_day))
    clock = pc.take(_clock_strings(), pa.array(secs % 86_400))
    frac = pc.utf8_rtrim(pc.utf8_slice_codeunits(pc.cast(pa.array(micros + 1_000_000), pa.string()), 1),
                         characters="0")
    frac = pc.if_else(pa.array(micros == 0), pa.scalar(" UTC\n"),
                      pc.binary_join_element_wise(".", frac, " UTC\n", ""))
    status = pc.take(pa.array(["inactive", "active"]), pa.array(active.astype(np.int8)))
    lines = pc.binary_join_element_wise(pc.take(ids, pa.array(store_idx)), ",", status, ",", date, clock, frac, "")
    return _values_buffer(lines)


_CLOCK: list[pa.Array] = []


def _clock_strings() -> pa.Array:
    """'HH:MM:SS' for every second of a day."""
    if not _CLOCK:
        _CLOCK.append(pa.array([f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)]))
    return _CLOCK[0]


def _values_buffer(arr: pa.Array) -> pa.Buffer:
    """The concatenated UTF-8 bytes of a string array without nulls."""
    arr = pc.cast(arr, pa.large_string())
    if len(arr) == 0:
        return pa.py_buffer(b"")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    return arr.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


# --- public API -------------------------------------------------------------------------------------

def generate_dataset(out_dir: Path, *, stores: int = 300, days: float = 8, seed: int = 0,
                     end: datetime | None = None, id_style: str = "int64",
                     poll_scale: int = 1, store_ids: Sequence[str] | None = None,
                     polls_per_hour: int = 1, special_share: float = SPECIAL_HOURS_SHARE) -> dict[str, Path]:
    """Write store_status.csv, business_hours.csv, timezones.csv and special_hours.csv into `out_dir`;
    return their paths.

    `special_share` of the stores get special hours in the last week of polls: a closed day (a holiday),
    and half of them also a short day (10:00-14:00) on another date. They come from their own random
    stream, so the other files are the same whatever the share.

    `store_ids` (optional) names the polled stores, e.g. the ids of a real business-hours/timezone file,
    so that generated polls can be combined with real hours: the first `stores` of them are polled, and
    generated ids make up any shortfall. `polls_per_hour=K` polls every store K times an hour instead
    of once (K times the polls inside every window; the benchmark's `--scale-mode density`).

    Deterministic: the same arguments give byte-identical files. `end` (UTC; naive means UTC) bounds the
    polls: all are before it, the latest within a few minutes of it. The history covers
    `days * poll_scale` days before `end`.
    """
    if id_style not in DAY_HEADER:
        raise ValueError(f"id_style must be 'int64' or 'uuid', got {id_style!r}")
    if stores < 1 or days <= 0 or poll_scale < 1 or not 1 <= polls_per_hour <= 60:
        raise ValueError("stores and poll_scale must be >= 1, days > 0, polls_per_hour 1..60")
    end = DEFAULT_END[id_style] if end is None else end
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)
    end_us = int((end - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1))
    start_us = end_us - int(round(days * poll_scale * DAY_US))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_unpolled = int(round(stores * UNPOLLED_SHARE))
    all_ids = _store_ids(rng, stores + n_unpolled, id_style)
    if store_ids is not None:
        given = list(dict.fromkeys(str(i) for i in store_ids))[:stores]
        taken = set(given)
        all_ids = given + [i for i in all_ids if i not in taken][: stores + n_unpolled - len(given)]
    polled_ids = all_ids[:stores]

    # Business hours and timezones: for the polled stores and the unpolled extras.
    has_hours = rng.random(len(all_ids)) >= NO_HOURS_SHARE
    has_tz = rng.random(len(all_ids)) >= NO_TIMEZONE_SHARE
    zones = list(TIMEZONE_WEIGHTS)
    zone_p = np.array(list(TIMEZONE_WEIGHTS.values()))
    zone_of = rng.choice(len(zones), size=len(all_ids), p=zone_p / zone_p.sum())
    hours_rng = np.random.default_rng([seed, 1])
    trailing = "\n" if id_style == "int64" else ""

    hours_lines = [f"store_id,{DAY_HEADER[id_style]},start_time_local,end_time_local"]
    for i in rng.permutation(len(all_ids)):
        if has_hours[i]:
            sid = all_ids[i]
            hours_lines.extend(f"{sid},{d},{s},{e}" for d, s, e in _store_hours(hours_rng))
    tz_lines = ["store_id,timezone_str"]
    tz_lines.extend(f"{all_ids[i]},{zones[zone_of[i]]}" for i in rng.permutation(len(all_ids)) if has_tz[i])

    paths = {
        "store_status": out_dir / "store_status.csv",
        "business_hours": out_dir / "business_hours.csv",
        "timezones": out_dir / "timezones.csv",
    }
    paths["business_hours"].write_bytes(("\n".join(hours_lines) + trailing).encode())
    paths["timezones"].write_bytes(("\n".join(tz_lines) + trailing).encode())
    paths["special_hours"] = out_dir / "special_hours.csv"
    paths["special_hours"].write_text(_special_hours_csv(all_ids, end, special_share, seed))

    # Polls, generated in blocks of stores to bound memory, then shuffled as a whole.
    poll_rng = np.random.default_rng([seed, 2])
    block = max(1, int(4_000_000 // max(1, (end_us - start_us) * polls_per_hour // HOUR_US + 2)))
    parts = [_polls(poll_rng, min(block, stores - b0), start_us, end_us, polls_per_hour)
             for b0 in range(0, stores, block)]
    base = np.cumsum([0] + [min(block, stores - b0) for b0 in range(0, stores, block)])[:-1]
    store_idx = np.concatenate([p[0] + b for p, b in zip(parts, base)])
    ts_us = np.concatenate([p[1] for p in parts])
    active = np.concatenate([p[2] for p in parts])
    del parts

    # Quirks of the real export: a few polls twice in the same second; rarely a whole-second timestamp.
    n = len(ts_us)
    if n:
        dup = poll_rng.choice(n, size=max(1, n // 200_000), replace=False)
        dup_ts = ts_us[dup] - ts_us[dup] % 1_000_000 + poll_rng.integers(0, 1_000_000, size=len(dup))
        store_idx = np.concatenate([store_idx, store_idx[dup]])
        ts_us = np.concatenate([ts_us, dup_ts])
        active = np.concatenate([active, active[dup]])
        whole = poll_rng.random(len(ts_us)) < 1e-4
        ts_us[whole] -= ts_us[whole] % 1_000_000
        # No 1-digit fractions (the real files show 2-6 digits): nudge x.d00000 to x.d00001.
        micros = ts_us % 1_000_000
        ts_us[(micros % 100_000 == 0) & (micros != 0)] += 1
    order = poll_rng.permutation(len(ts_us))
    store_idx, ts_us, active = store_idx[order], ts_us[order], active[order]

    ids_arr = pa.array(polled_ids, pa.string())
    with open(paths["store_status"], "wb") as f:
        f.write(b"store_id,status,timestamp_utc\n")
        for c0 in range(0, len(ts_us), CHUNK_ROWS):
            sl = slice(c0, c0 + CHUNK_ROWS)
            f.write(_format_status_chunk(ids_arr, store_idx[sl], ts_us[sl], active[sl]))
    return paths


def _special_hours_csv(ids: Sequence[str], end: datetime, share: float, seed: int) -> str:
    """special_hours.csv: a closed date for `share` of the stores, and a short day for half of those."""
    rng = np.random.default_rng([seed, 3])
    chosen = np.flatnonzero(rng.random(len(ids)) < share)
    closed_day = rng.integers(0, 7, size=len(chosen))
    short_day = (closed_day + rng.integers(1, 7, size=len(chosen))) % 7
    with_short = rng.random(len(chosen)) < 0.5
    last = end.date()
    lines = ["store_id,date,start_time_local,end_time_local"]
    for i, closed, short, has_short in zip(chosen, closed_day, short_day, with_short):
        lines.append(f"{ids[i]},{last - timedelta(days=int(closed))},,")
        if has_short:
            lines.append(f"{ids[i]},{last - timedelta(days=int(short))},10:00:00,14:00:00")
    return "\n".join(lines) + "\n"


def count_rows(path: Path) -> int:
    """Data rows of a CSV file (header excluded, a missing final newline allowed), read in blocks."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (0 if last == b"\n" else 1) - 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--stores", type=int, default=300, help="polled stores (default 300; real size 14000)")
    parser.add_argument("--days", type=float, default=8, help="days of poll history (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--id-style", choices=sorted(DAY_HEADER), default="int64",
                        help="int64: 2023 edition (header `day`); uuid: 2024 edition (header `dayOfWeek`)")
    parser.add_argument("--poll-scale", type=int, default=1, help="K: K times longer poll history")
    parser.add_argument("--polls-per-hour", type=int, default=1, help="K: poll every store K times an hour")
    parser.add_argument("--end", help="UTC instant bounding the polls, ISO 8601 (default: fixed per edition)")
    parser.add_argument("--special-share", type=float, default=SPECIAL_HOURS_SHARE,
                        help=f"share of stores with special hours (default {SPECIAL_HOURS_SHARE}; 0: none)")
    args = parser.parse_args(argv)
    end = datetime.fromisoformat(args.end.replace("Z", "+00:00")) if args.end else None
    try:
        paths = generate_dataset(args.out, stores=args.stores, days=args.days, seed=args.seed, end=end,
                                 id_style=args.id_style, poll_scale=args.poll_scale,
                                 polls_per_hour=args.polls_per_hour, special_share=args.special_share)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name:15s} {count_rows(path):>10,d} rows  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
