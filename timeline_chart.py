"""A store's timeline drawn as inline SVG, on the server, from the timeline dict of the reports service.

One chart is one time window (the last day, the last week): business hours shaded, the status segments
(up, down, unknown) in a band, polls as dots above it, special dates and DST changes marked, and local
time on the axis. Colours are the Okabe-Ito palette (safe for colour-blind readers), and every status also
has its own pattern and every poll its own shape, so nothing depends on colour alone. Each segment and
poll carries a <title> (the browser shows it on hover) naming the poll its status comes from, and data
attributes (`data-status`, `data-begin`, `data-end`, `data-us`: its length inside the window, in
microseconds) from which its lengths can be summed: per status they equal the store's report figures.

No JavaScript and no library: `timeline_svg` returns markup, escaped here, for a Jinja template.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from html import escape
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from markupsafe import Markup

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
US_PER_SECOND = 1_000_000
US_PER_HOUR = 3600 * US_PER_SECOND
US_PER_DAY = 24 * US_PER_HOUR

# Okabe-Ito colours; each status also gets a pattern (see _defs), each poll status a shape.
COLOURS = {"up": "#0072B2", "down": "#D55E00", "unknown": "#BBBBBB", "business": "#E6EEF5",
           "special": "#CC79A7", "dst": "#009E73", "axis": "#444444"}
STATUS_LABELS = {"up": "Up", "down": "Down", "unknown": "Unknown"}

# Geometry (SVG user units; the chart scales to the width of the page).
WIDTH = 1000
LEFT, RIGHT = 10, 10
SPECIAL_Y, SPECIAL_H = 2, 15
SHADE_Y, SHADE_H = 20, 72
POLL_Y = 33
BAND_Y, BAND_H = 46, 36
AXIS_Y = 96
HEIGHT = 124


def us_of(text: str) -> int:
    """ISO 8601 instant -> microseconds since the epoch (exact)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - EPOCH) // timedelta(microseconds=1)


def moment_of(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(us))


def zone_of(name: str | None):
    try:
        return ZoneInfo(name) if name else timezone.utc
    except (ZoneInfoNotFoundError, ValueError):
        return timezone.utc


def local_text(us: int, zone, *, seconds: bool = True, day: bool = True) -> str:
    moment = moment_of(us).astimezone(zone)
    clock = moment.strftime("%H:%M:%S" if seconds else "%H:%M")
    return f"{moment.strftime('%a %d %b')} {clock}" if day else clock


def local_range(begin_us: int, end_us: int, zone) -> str:
    """'Tue 24 Jan 10:13:21 – 11:30:47' (the date once when both ends fall on one local date)."""
    same_day = moment_of(begin_us).astimezone(zone).date() == moment_of(end_us).astimezone(zone).date()
    return f"{local_text(begin_us, zone)} – {local_text(end_us, zone, day=not same_day)}"


def duration_text(us: int) -> str:
    """1 h 15 min, 45 min 30 s, 2 d 3 h: the two largest units."""
    seconds = int(round(us / US_PER_SECOND))
    if seconds == 0 and us > 0:
        return "under 1 s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
    return " ".join(parts[:2]) if parts else "0 s"


class _Scale:
    def __init__(self, begin_us: int, end_us: int):
        self.begin, self.end = begin_us, end_us
        self.span = max(end_us - begin_us, 1)

    def x(self, us: int) -> float:
        return LEFT + (min(max(us, self.begin), self.end) - self.begin) * (WIDTH - LEFT - RIGHT) / self.span

    def clip(self, begin: int, end: int) -> tuple[int, int] | None:
        b, e = max(begin, self.begin), min(end, self.end)
        return (b, e) if e > b else None


def _f(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _defs(cid: str) -> str:
    c = COLOURS
    return (
        "<defs>"
        f'<pattern id="{cid}-p-up" patternUnits="userSpaceOnUse" width="8" height="8">'
        f'<rect width="8" height="8" fill="{c["up"]}"/></pattern>'
        f'<pattern id="{cid}-p-down" patternUnits="userSpaceOnUse" width="7" height="7" '
        'patternTransform="rotate(45)">'
        f'<rect width="7" height="7" fill="{c["down"]}"/><rect width="2.5" height="7" fill="#ffffff" '
        'fill-opacity="0.55"/></pattern>'
        f'<pattern id="{cid}-p-unknown" patternUnits="userSpaceOnUse" width="6" height="6">'
        f'<rect width="6" height="6" fill="#eeeeee"/><circle cx="3" cy="3" r="1.3" fill="#777777"/></pattern>'
        f'<pattern id="{cid}-p-special" patternUnits="userSpaceOnUse" width="6" height="6" '
        'patternTransform="rotate(-45)">'
        f'<rect width="6" height="6" fill="#f6e8f0"/><rect width="2" height="6" fill="{c["special"]}" '
        'fill-opacity="0.6"/></pattern>'
        "</defs>"
    )


def _ticks(scale: _Scale, zone, step_hours: int) -> list[tuple[int, datetime]]:
    """Local wall-clock instants on multiples of `step_hours` inside the window, as (us, local time)."""
    first = moment_of(scale.begin).astimezone(zone).date() - timedelta(days=1)
    last = moment_of(scale.end).astimezone(zone).date() + timedelta(days=1)
    seen, ticks = set(), []
    day = first
    while day <= last:
        for hour in range(0, 24, step_hours):
            local = datetime(day.year, day.month, day.day, hour, tzinfo=zone)
            us = (local.astimezone(timezone.utc) - EPOCH) // timedelta(microseconds=1)
            if scale.begin <= us <= scale.end and us not in seen:
                seen.add(us)
                ticks.append((us, local))
        day += timedelta(days=1)
    return sorted(ticks, key=lambda item: item[0])


def _local_day_span(date_text: str, zone) -> tuple[int, int]:
    """[local midnight, next local midnight) of a local date, in UTC microseconds."""
    day = datetime.fromisoformat(date_text).date()
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    end_day = day + timedelta(days=1)
    end = datetime(end_day.year, end_day.month, end_day.day, tzinfo=zone)
    return ((start.astimezone(timezone.utc) - EPOCH) // timedelta(microseconds=1),
            (end.astimezone(timezone.utc) - EPOCH) // timedelta(microseconds=1))


def _special_text(special: dict) -> str:
    if special.get("closed"):
        return "closed"
    hours = special.get("hours") or []
    return ", ".join(f"{str(a)[:5]}–{str(b)[:5]}" for a, b in hours) or "special hours"


def _poll_source_text(segment: dict, polls_by_time: dict, zone, reach_minutes) -> str:
    status = segment["status"]
    poll = segment.get("poll")
    if poll:
        found = polls_by_time.get(us_of(poll))
        what = found["status"] if found else ""
        when = local_text(us_of(poll), zone)
        return f"from the poll at {when} local ({what})" if what else f"from the poll at {when} local"
    if status == "unknown":
        reach = "unbounded reach" if reach_minutes is None else f"reach {reach_minutes} min"
        return f"no poll speaks for this time ({reach})"
    return "no poll named"


def timeline_svg(timeline: dict, begin_us: int, end_us: int, *, chart_id: str, title: str,
                 step_hours: int = 3, day_labels: bool = False, poll_size: float = 4) -> Markup:
    """The chart of `timeline` over [begin_us, end_us): an <svg> element, with <title>s and data attributes.

    `step_hours`: local-time tick spacing; `day_labels`: label ticks at local midnight with the date (the
    week view) instead of the hour; `poll_size`: the radius of a poll's dot.
    """
    zone = zone_of(timeline.get("timezone"))
    zone_name = timeline.get("timezone") or "UTC"
    scale = _Scale(begin_us, end_us)
    cid = escape(chart_id)
    reach = timeline.get("reach_minutes")
    out = [f'<svg class="timeline" id="{cid}" role="img" aria-labelledby="{cid}-title {cid}-desc" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" data-begin="{escape(_iso(begin_us))}" data-end="{escape(_iso(end_us))}" '
           f'xmlns="http://www.w3.org/2000/svg">',
           f'<title id="{cid}-title">{escape(title)}</title>']
    totals = {"up": 0, "down": 0, "unknown": 0}
    segments = []
    for segment in timeline.get("segments", []):
        clipped = scale.clip(us_of(segment["begin"]), us_of(segment["end"]))
        if clipped:
            segments.append((segment, *clipped))
            totals[segment["status"]] = totals.get(segment["status"], 0) + clipped[1] - clipped[0]
    desc = (f"Business time from {local_text(begin_us, zone)} to {local_text(end_us, zone)} ({zone_name}): "
            + ", ".join(f"{STATUS_LABELS[s].lower()} {duration_text(totals[s])}" for s in ("up", "down", "unknown")))
    out.append(f'<desc id="{cid}-desc">{escape(desc)}</desc>')
    out.append(_defs(cid))

    # Closed time: a thin line through the band. Business hours: shaded columns.
    mid = BAND_Y + BAND_H / 2
    out.append(f'<line class="closed" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{mid}" y2="{mid}" stroke="#c8c8c8" '
               'stroke-width="1"/>')
    for interval in timeline.get("business_intervals", []):
        clipped = scale.clip(us_of(interval["begin"]), us_of(interval["end"]))
        if not clipped:
            continue
        x0, x1 = scale.x(clipped[0]), scale.x(clipped[1])
        special = interval.get("special_date")
        label = (f"Business hours {local_range(us_of(interval['begin']), us_of(interval['end']), zone)} local time"
                 + (f" (special hours of {special})" if special else ""))
        out.append(f'<rect class="business{" special" if special else ""}" x="{_f(x0)}" y="{SHADE_Y}" '
                   f'width="{_f(max(x1 - x0, 0.3))}" height="{SHADE_H}" fill="{COLOURS["business"]}"'
                   + (f' stroke="{COLOURS["special"]}" stroke-dasharray="3 2"' if special else "")
                   + f'><title>{escape(label)}</title></rect>')

    # Special dates: a hatched band over the local date, labelled.
    for special in timeline.get("special_dates", []):
        try:
            span = scale.clip(*_local_day_span(special["date"], zone))
        except (KeyError, ValueError):
            continue
        if not span:
            continue
        x0, x1 = scale.x(span[0]), scale.x(span[1])
        text = _special_text(special)
        tip = f"Special hours on {special['date']}: {text} (they replace the weekly hours)"
        out.append(f'<g class="special-date" data-date="{escape(special["date"])}">'
                   f'<rect x="{_f(x0)}" y="{SPECIAL_Y}" width="{_f(max(x1 - x0, 1))}" height="{SPECIAL_H}" '
                   f'fill="url(#{cid}-p-special)"><title>{escape(tip)}</title></rect>'
                   + (f'<text x="{_f(x0 + 3)}" y="{SPECIAL_Y + 11}" class="label special-label">'
                      f'{escape(special["date"][5:] + " " + text)}</text>' if x1 - x0 > 70 else "")
                   + "</g>")

    # Status segments.
    polls_by_time = {us_of(p["at"]): p for p in timeline.get("polls", [])}
    for segment, b, e in segments:
        status = segment["status"]
        x0, x1 = scale.x(b), scale.x(e)
        tip = (f"{STATUS_LABELS.get(status, status)} {local_range(b, e, zone)} local time "
               f"({duration_text(e - b)}), {_poll_source_text(segment, polls_by_time, zone, reach)}")
        out.append(f'<rect class="segment segment-{escape(status)}" x="{_f(x0)}" y="{BAND_Y}" '
                   f'width="{_f(x1 - x0)}" height="{BAND_H}" fill="url(#{cid}-p-{escape(status)})" '
                   f'data-status="{escape(status)}" data-begin="{escape(_iso(b))}" data-end="{escape(_iso(e))}" '
                   f'data-us="{e - b}" data-poll="{escape(segment.get("poll") or "")}">'
                   f'<title>{escape(tip)}</title></rect>')

    # DST changes.
    for change in timeline.get("dst_changes", []):
        at = us_of(change["at"])
        if not begin_us <= at <= end_us:
            continue
        x = scale.x(at)
        offsets = f"{change.get('offset_before', '')} → {change.get('offset_after', '')}"
        text = f"DST {offsets}"
        out.append(f'<g class="dst-change" data-at="{escape(change["at"])}">'
                   f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{SPECIAL_Y}" y2="{AXIS_Y}" stroke="{COLOURS["dst"]}" '
                   'stroke-width="2" stroke-dasharray="4 3"/>'
                   f'<text x="{_f(min(x + 3, WIDTH - 120))}" y="{SHADE_Y + 9}" class="label dst-label">{escape(text)}</text>'
                   f'<title>{escape(f"Clocks change at {local_text(at, zone)}: UTC offset {offsets}")}</title></g>')

    # Polls: active = filled circle, inactive = diamond; polls outside business hours (no evidence) hollow.
    for poll in timeline.get("polls", []):
        at = us_of(poll["at"])
        if not begin_us <= at <= end_us:
            continue
        x = scale.x(at)
        active = poll["status"] == "active"
        colour = COLOURS["up"] if active else COLOURS["down"]
        evidence = poll.get("evidence", True)
        fill = colour if evidence else "#ffffff"
        tip = (f"Poll at {local_text(at, zone)} local time ({_iso(at)}): {poll['status']}"
               + ("" if evidence else " — outside business hours, so not evidence"))
        r, d = poll_size, _f(poll_size * 1.25)
        shape = (f'<circle cx="{_f(x)}" cy="{POLL_Y}" r="{_f(r)}"' if active else
                 f'<path d="M{_f(x)} {_f(POLL_Y - poll_size * 1.25)}l{d} {d}l-{d} {d}l-{d} -{d}z"')
        out.append(f'{shape} class="poll poll-{"active" if active else "inactive"}{"" if evidence else " poll-outside"}" '
                   f'fill="{fill}" stroke="{colour}" stroke-width="1.5" data-at="{escape(poll["at"])}">'
                   f'<title>{escape(tip)}</title>{"</circle>" if active else "</path>"}')

    # Axis: local time.
    out.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{AXIS_Y}" y2="{AXIS_Y}" '
               f'stroke="{COLOURS["axis"]}"/>')
    for us, local in _ticks(scale, zone, step_hours):
        x = scale.x(us)
        midnight = local.hour == 0
        out.append(f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{AXIS_Y}" y2="{AXIS_Y + (7 if midnight else 4)}" '
                   f'stroke="{COLOURS["axis"]}"/>')
        if day_labels:
            if midnight:
                out.append(f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{SHADE_Y}" y2="{AXIS_Y}" stroke="#9aa5b1" '
                           'stroke-width="0.6"/>')
                if x < WIDTH - RIGHT - 60:
                    out.append(f'<text x="{_f(x + 3)}" y="{AXIS_Y + 18}" class="label tick">'
                               f'{escape(local.strftime("%a %d %b"))}</text>')
        else:
            text = local.strftime("%a %d") if midnight else local.strftime("%H:%M")
            anchor = "start" if x < LEFT + 20 else ("end" if x > WIDTH - RIGHT - 20 else "middle")
            out.append(f'<text x="{_f(x)}" y="{AXIS_Y + 18}" text-anchor="{anchor}" '
                       f'class="label tick{" tick-day" if midnight else ""}">{escape(text)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _iso(us: int) -> str:
    moment = moment_of(us)
    text = moment.replace(tzinfo=None).isoformat(timespec="microseconds" if moment.microsecond else "seconds")
    return text + "Z"


def segment_rows(timeline: dict, begin_us: int, end_us: int) -> list[dict]:
    """The segments inside the window as table rows (local times, length, source poll), oldest first."""
    zone = zone_of(timeline.get("timezone"))
    scale = _Scale(begin_us, end_us)
    polls_by_time = {us_of(p["at"]): p for p in timeline.get("polls", [])}
    rows = []
    for segment in timeline.get("segments", []):
        clipped = scale.clip(us_of(segment["begin"]), us_of(segment["end"]))
        if not clipped:
            continue
        b, e = clipped
        poll = segment.get("poll")
        found = polls_by_time.get(us_of(poll)) if poll else None
        rows.append({"status": segment["status"], "begin": local_text(b, zone), "end": local_text(e, zone),
                     "length": duration_text(e - b),
                     "poll": local_text(us_of(poll), zone) if poll else None,
                     "poll_status": found["status"] if found else None})
    return rows
