"""Generate config/areas-outlines.geojson: APPROXIMATE demo outlines for the wall map when no tile server is
configured. The province outline is a hand-traced rough polygon; districts are the Voronoi cells of their
towns (config/areas.yaml) clipped to it. Not official boundaries — every feature says so.

    python tools/area_outlines.py > config/areas-outlines.geojson
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from occ.devices import load_areas  # noqa: E402

# Rough outline of Hà Giang province (lon, lat), clockwise from Lũng Cú; traced by eye, ~5 km accuracy.
PROVINCE = [
    (105.32, 23.39), (105.55, 23.20), (105.60, 23.05), (105.45, 22.95), (105.30, 22.85), (105.15, 22.62),
    (105.05, 22.45), (104.95, 22.25), (104.75, 22.15), (104.55, 22.25), (104.38, 22.45), (104.35, 22.70),
    (104.50, 22.80), (104.60, 22.85), (104.75, 22.85), (104.85, 23.05), (104.85, 23.20), (105.05, 23.25),
    (105.20, 23.32),
]
SCALE = math.cos(math.radians(22.8))  # degrees of longitude are shorter than degrees of latitude here


Point = tuple[float, float]


def clip(polygon: list[Point], a: Point, b: Point) -> list[Point]:
    """Keep the part of `polygon` closer to `a` than to `b` (Sutherland–Hodgman against one half-plane)."""

    def side(p: Point) -> float:
        da = ((p[0] - a[0]) * SCALE) ** 2 + (p[1] - a[1]) ** 2
        db = ((p[0] - b[0]) * SCALE) ** 2 + (p[1] - b[1]) ** 2
        return db - da  # > 0: closer to a

    out: list[Point] = []
    for i, p in enumerate(polygon):
        q = polygon[(i + 1) % len(polygon)]
        sp, sq = side(p), side(q)
        if sp >= 0:
            out.append(p)
        if (sp >= 0) != (sq >= 0):
            t = sp / (sp - sq)
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def main() -> None:
    areas = load_areas(ROOT / "config" / "areas.yaml")
    districts = [a for a in areas if a.kind == "district" and a.lat is not None and a.lon is not None]
    features = []
    for area in areas:
        if area.kind == "province":
            ring = PROVINCE
        elif area in districts:
            ring = list(PROVINCE)
            for other in districts:
                if other.id != area.id:
                    ring = clip(ring, (area.lon, area.lat), (other.lon, other.lat))  # type: ignore[arg-type]
        else:
            continue
        coords = [[round(x, 4), round(y, 4)] for x, y in ring]
        features.append({
            "type": "Feature",
            "properties": {"id": area.id, "name": area.name, "name_en": area.name_en, "kind": area.kind,
                           "official": False, "note": "approximate demo outline, not an official boundary"},
            "geometry": {"type": "Polygon", "coordinates": [[*coords, coords[0]]]},
        })
    json.dump({"type": "FeatureCollection", "name": "Hà Giang (approximate demo outlines, not official)",
               "features": features}, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
