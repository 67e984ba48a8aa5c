-- Rollup refresh by time range (issue 9 item 7). occ_refresh_hours() recomputed one hour per statement, and each
-- statement scanned the whole readings partition holding that hour: 24 dirty hours of a 7-day partition meant 24
-- scans (~0.9 s each for 360k rows on a 2-core machine), so maintenance spent its budget on hours and daily
-- rollups lagged. Maintenance now coalesces the dirty hours into ranges and recomputes each range in one pass.

-- Recompute the 1-minute and 1-hour rollups of [p_lo, p_hi) (whole UTC hours) from raw readings.
CREATE FUNCTION occ_refresh_range(p_lo timestamptz, p_hi timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_total bigint;
BEGIN
    INSERT INTO readings_1m AS t (device_id, metric, bucket, cnt, sum_v, min_v, max_v, avg_v,
                                  first_v, last_v, first_ts, last_ts)
    SELECT device_id, metric, date_trunc('minute', ts, 'UTC'), count(*), sum(value), min(value), max(value),
           avg(value), (array_agg(value ORDER BY ts))[1], (array_agg(value ORDER BY ts DESC))[1],
           min(ts), max(ts)
    FROM readings
    WHERE ts >= p_lo AND ts < p_hi
    GROUP BY 1, 2, 3
    ON CONFLICT (device_id, metric, bucket) DO UPDATE
    SET cnt = excluded.cnt, sum_v = excluded.sum_v, min_v = excluded.min_v, max_v = excluded.max_v,
        avg_v = excluded.avg_v, first_v = excluded.first_v, last_v = excluded.last_v,
        first_ts = excluded.first_ts, last_ts = excluded.last_ts;
    GET DIAGNOSTICS v_total = ROW_COUNT;

    INSERT INTO readings_1h AS t (device_id, metric, bucket, cnt, sum_v, min_v, max_v, avg_v,
                                  first_v, last_v, first_ts, last_ts)
    SELECT device_id, metric, date_trunc('hour', bucket, 'UTC'), sum(cnt)::bigint, sum(sum_v), min(min_v),
           max(max_v), sum(sum_v) / sum(cnt)::double precision,
           (array_agg(first_v ORDER BY first_ts))[1], (array_agg(last_v ORDER BY last_ts DESC))[1],
           min(first_ts), max(last_ts)
    FROM readings_1m
    WHERE bucket >= p_lo AND bucket < p_hi
    GROUP BY 1, 2, 3
    ON CONFLICT (device_id, metric, bucket) DO UPDATE
    SET cnt = excluded.cnt, sum_v = excluded.sum_v, min_v = excluded.min_v, max_v = excluded.max_v,
        avg_v = excluded.avg_v, first_v = excluded.first_v, last_v = excluded.last_v,
        first_ts = excluded.first_ts, last_ts = excluded.last_ts;
    RETURN v_total;
END;
$$;
