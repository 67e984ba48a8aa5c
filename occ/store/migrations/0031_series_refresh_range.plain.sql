-- Plain path: occ_refresh_range (0006, one pass per run of consecutive dirty hours) for the series layout of 0030:
-- series_1m/series_1h rows only for the series that keep that level (series.level), computed from raw readings in
-- one pass over [p_lo, p_hi) per level, and nothing at all when no series keeps the level.

CREATE OR REPLACE FUNCTION occ_refresh_range(p_lo timestamptz, p_hi timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_rows bigint;
    v_total bigint := 0;
BEGIN
    IF EXISTS (SELECT 1 FROM series WHERE level = 0) THEN
        INSERT INTO series_1m AS t (series_id, bucket, cnt, sum_v, min_v, max_v, first_v, last_v, first_ts, last_ts)
        SELECT r.series_id, date_trunc('minute', r.ts, 'UTC'), count(*), sum(r.value), min(r.value), max(r.value),
               (array_agg(r.value ORDER BY r.ts))[1], (array_agg(r.value ORDER BY r.ts DESC))[1],
               min(r.ts), max(r.ts)
        FROM series_readings AS r JOIN series AS s ON s.id = r.series_id AND s.level = 0
        WHERE r.ts >= p_lo AND r.ts < p_hi
        GROUP BY 1, 2
        ON CONFLICT (series_id, bucket) DO UPDATE
        SET cnt = excluded.cnt, sum_v = excluded.sum_v, min_v = excluded.min_v, max_v = excluded.max_v,
            first_v = excluded.first_v, last_v = excluded.last_v,
            first_ts = excluded.first_ts, last_ts = excluded.last_ts;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_total := v_total + v_rows;
    END IF;
    IF EXISTS (SELECT 1 FROM series WHERE level <= 1) THEN
        INSERT INTO series_1h AS t (series_id, bucket, cnt, sum_v, min_v, max_v, first_v, last_v, first_ts, last_ts)
        SELECT r.series_id, date_trunc('hour', r.ts, 'UTC'), count(*), sum(r.value), min(r.value), max(r.value),
               (array_agg(r.value ORDER BY r.ts))[1], (array_agg(r.value ORDER BY r.ts DESC))[1],
               min(r.ts), max(r.ts)
        FROM series_readings AS r JOIN series AS s ON s.id = r.series_id AND s.level <= 1
        WHERE r.ts >= p_lo AND r.ts < p_hi
        GROUP BY 1, 2
        ON CONFLICT (series_id, bucket) DO UPDATE
        SET cnt = excluded.cnt, sum_v = excluded.sum_v, min_v = excluded.min_v, max_v = excluded.max_v,
            first_v = excluded.first_v, last_v = excluded.last_v,
            first_ts = excluded.first_ts, last_ts = excluded.last_ts;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_total := v_total + v_rows;
    END IF;
    RETURN v_total;
END;
$$;
