"""`occ history DEVICE METRIC`: a metric's history from the command line, through the store's history query.

Engineers had no way to read history except SQL on `readings_1h` and its `sum_v` columns (issue 9). This is the
same query the REST API uses (rollups where they line up and are complete, raw readings elsewhere), with
every time read and printed in the site time zone.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from occ.cli_devices import load_catalog, open_store, unknown_device_message
from occ.config import Config
from occ.errors import UsageError

_RELATIVE = re.compile(r"^\s*-\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$|^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s+ago\s*$")
_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, tz: ZoneInfo, now: datetime, what: str) -> datetime:
    """'now', '-6h' / '6h ago', a date (local midnight) or an ISO time (local unless it carries an offset)."""
    value = text.strip()
    if value.lower() == "now":
        return now
    match = _RELATIVE.match(value.lower())
    if match:
        amount = float(match.group(1) or match.group(3))
        unit = match.group(2) or match.group(4)
        return now - timedelta(seconds=amount * _SECONDS[unit])
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), tz)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--{what} {text!r}: expected an ISO time (2026-11-27T07:00), a date, 'now' or a "
                         "relative time such as -6h or '2d ago'") from None
    return parsed.replace(tzinfo=tz) if parsed.tzinfo is None else parsed


async def history(config: Config, device_id: str, metric: str, *, start: str, end: str, bucket: str, agg: str,
                  fill: str | None, hydro_day: bool, fmt: str, now: datetime | None = None) -> int:
    from occ.store import parse_bucket

    tz = ZoneInfo(config.site.timezone)
    now = now or datetime.now(tz)
    t0 = parse_time(start, tz=tz, now=now, what="from")
    t1 = parse_time(end, tz=tz, now=now, what="to")
    if t0 >= t1:
        raise UsageError(f"--from ({t0.isoformat()}) must be before --to ({t1.isoformat()})")
    try:
        size = parse_bucket(bucket)
    except ValueError as exc:
        raise UsageError(f"--bucket: {exc}") from None
    day_start = config.site.hydro_day_start_hour if hydro_day else 0
    store = await open_store(config)
    try:
        device = await store.get_device(device_id)
        points = await store.history(device_id, metric, t0, t1, bucket=size, agg=agg, fill=fill, tz=tz,
                                     day_start_hour=day_start)
        if not points:
            # Say why the answer is empty when the question names something that does not exist.
            if device is None:
                registry = await store.list_devices()
                raise UsageError(unknown_device_message(device_id, [d.id for d in registry]))
            catalog = load_catalog(config)
            known = sorted({v.metric for v in await store.latest([device_id])}
                           | {m.name for m in catalog.metrics_for_kind(device.kind)})
            if metric not in known:
                raise UsageError(f"{device_id} ({device.kind}) has no metric {metric!r}; its metrics: "
                                 f"{', '.join(known)}")
    finally:
        await store.close()
    spec = load_catalog(config).metric(metric)
    unit = spec.unit if spec else ""
    rows = [(p.bucket.astimezone(tz), p.value) for p in points]
    write(rows, fmt=fmt, device_id=device_id, metric=metric, agg=agg, unit=unit, bucket=bucket)
    if fmt == "table":
        print(f"{len(rows)} buckets, {t0.isoformat(timespec='minutes')} to {t1.isoformat(timespec='minutes')} "
              f"({config.site.timezone})", file=sys.stderr)
    return 0


def write(rows: Sequence[tuple[datetime, float | None]], *, fmt: str, device_id: str, metric: str, agg: str,
          unit: str, bucket: str) -> None:
    if fmt == "json":
        doc: dict[str, Any] = {
            "device_id": device_id, "metric": metric, "unit": unit, "agg": agg, "bucket": bucket,
            "points": [{"ts": ts.isoformat(), "value": value} for ts, value in rows],
        }
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    elif fmt == "csv":
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["ts", f"{metric}_{agg}"])
        for ts, value in rows:
            out.writerow([ts.isoformat(), "" if value is None else repr(value)])
    else:
        header = f"{agg}({metric})" + (f" [{unit}]" if unit else "")
        print(f"{'bucket start':<25}  {header}")
        for ts, value in rows:
            print(f"{ts.isoformat(sep=' ', timespec='seconds'):<25}  {'-' if value is None else f'{value:g}'}")
