-- TimescaleDB path: the whole-range rollup refresh functions for the series layout of 0032. Maintenance calls
-- them on both paths since 0033 (a live hour or day is recomputed in one range pass), but they were created by
-- the plain path's migrations only (0030, 0031), so a TimescaleDB database lacked them. Same bodies as there.

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

-- Recompute the 1-day rollups of the given local days (each given as its local midnight) in zone p_tz, for
-- the series that keep them: from their hourly rollups when they have them and the zone's offset is a whole
-- number of hours on that day, else from raw readings.
CREATE OR REPLACE FUNCTION occ_refresh_days(p_days timestamptz[], p_tz text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    d timestamptz;
    d_end timestamptz;
    v_hourly boolean;
    v_rows bigint;
    v_total bigint := 0;
BEGIN
    FOREACH d IN ARRAY p_days LOOP
        d_end := ((d AT TIME ZONE p_tz) + interval '1 day') AT TIME ZONE p_tz;
        v_hourly := extract(epoch FROM (d AT TIME ZONE p_tz) - (d AT TIME ZONE 'UTC'))::bigint % 3600 = 0
            AND extract(epoch FROM (d_end AT TIME ZONE p_tz) - (d_end AT TIME ZONE 'UTC'))::bigint % 3600 = 0;
        INSERT INTO series_1d AS t (series_id, bucket, cnt, sum_v, min_v, max_v, first_v, last_v,
                                    first_ts, last_ts)
        SELECT p.series_id, d, sum(p.cnt), sum(p.sum_v), min(p.min_v), max(p.max_v),
               (array_agg(p.first_v ORDER BY p.first_ts))[1], (array_agg(p.last_v ORDER BY p.last_ts DESC))[1],
               min(p.first_ts), max(p.last_ts)
        FROM (
            SELECT h.series_id, h.cnt, h.sum_v, h.min_v, h.max_v, h.first_v, h.last_v, h.first_ts, h.last_ts
            FROM series_1h AS h JOIN series AS s ON s.id = h.series_id AND s.level <= 1
            WHERE v_hourly AND h.bucket >= d AND h.bucket < d_end
            UNION ALL
            SELECT r.series_id, 1, r.value, r.value, r.value, r.value, r.value, r.ts, r.ts
            FROM series_readings AS r
            JOIN series AS s ON s.id = r.series_id AND (s.level = 2 OR (s.level <= 1 AND NOT v_hourly))
            WHERE r.ts >= d AND r.ts < d_end
        ) AS p
        GROUP BY p.series_id
        ON CONFLICT (series_id, bucket) DO UPDATE
        SET cnt = excluded.cnt, sum_v = excluded.sum_v, min_v = excluded.min_v, max_v = excluded.max_v,
            first_v = excluded.first_v, last_v = excluded.last_v,
            first_ts = excluded.first_ts, last_ts = excluded.last_ts;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_total := v_total + v_rows;
    END LOOP;
    RETURN v_total;
END;
$$;
