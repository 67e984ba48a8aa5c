-- Rollups on plain PostgreSQL, maintained by the platform (ARCHITECTURE §4). Same columns as the TimescaleDB
-- continuous aggregates, so history queries read either the same way. first_ts/last_ts (the times of the
-- first and last reading) let first/last combine correctly across buckets and devices. 1-minute and 1-hour
-- buckets are UTC aligned; 1-day buckets are local days in the rollup time zone (occ_settings
-- 'rollup_timezone').
--
-- Writers append the hours they touch to rollup_dirty; maintenance calls occ_refresh_hours() and then
-- occ_refresh_days() for days whose hours are all clean. Readings are never updated in place, so an upsert of
-- the recomputed buckets is exact.

CREATE TABLE readings_1m (
    device_id text NOT NULL,
    metric    text NOT NULL,
    bucket    timestamptz NOT NULL,
    cnt       bigint NOT NULL,
    sum_v     double precision NOT NULL,
    min_v     double precision NOT NULL,
    max_v     double precision NOT NULL,
    avg_v     double precision NOT NULL,
    first_v   double precision NOT NULL,
    last_v    double precision NOT NULL,
    first_ts  timestamptz NOT NULL,
    last_ts   timestamptz NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
);
CREATE TABLE readings_1h (LIKE readings_1m INCLUDING ALL);
CREATE TABLE readings_1d (LIKE readings_1m INCLUDING ALL);

-- Recompute the 1-minute and 1-hour rollups of the given UTC hours from raw readings.
CREATE FUNCTION occ_refresh_hours(p_hours timestamptz[])
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    h timestamptz;
    v_rows bigint;
    v_total bigint := 0;
BEGIN
    FOREACH h IN ARRAY p_hours LOOP
        INSERT INTO readings_1m AS t (device_id, metric, bucket, cnt, sum_v, min_v, max_v, avg_v,
                                      first_v, last_v, first_ts, last_ts)
        SELECT device_id, metric, date_trunc('minute', ts, 'UTC'), count(*), sum(value), min(value), max(value),
               avg(value), (array_agg(value ORDER BY ts))[1], (array_agg(value ORDER BY ts DESC))[1],
               min(ts), max(ts)
        FROM readings
        WHERE ts >= h AND ts < h + interval '1 hour'
        GROUP BY 1, 2, 3
        ON CONFLICT (device_id, metric, bucket) DO UPDATE
        SET cnt = excluded.cnt, sum_v = excluded.sum_v, min_v = excluded.min_v, max_v = excluded.max_v,
            avg_v = excluded.avg_v, first_v = excluded.first_v, last_v = excluded.last_v,
            first_ts = excluded.first_ts, last_ts = excluded.last_ts;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_total := v_total + v_rows;

        INSERT INTO readings_1h AS t (device_id, metric, bucket, cnt, sum_v, min_v, max_v, avg_v,
                                      first_v, last_v, first_ts, last_ts)
        SELECT device_id, metric, h, sum(cnt)::bigint, sum(sum_v), min(min_v), max(max_v),
               sum(sum_v) / sum(cnt)::double precision,
               (array_agg(first_v ORDER BY first_ts))[1], (array_agg(last_v ORDER BY last_ts DESC))[1],
               min(first_ts), max(last_ts)
        FROM readings_1m
        WHERE bucket >= h AND bucket < h + interval '1 hour'
        GROUP BY device_id, metric
        ON CONFLICT (device_id, metric, bucket) DO UPDATE
        SET cnt = excluded.cnt, sum_v = excluded.sum_v, min_v = excluded.min_v, max_v = excluded.max_v,
            avg_v = excluded.avg_v, first_v = excluded.first_v, last_v = excluded.last_v,
            first_ts = excluded.first_ts, last_ts = excluded.last_ts;
    END LOOP;
    RETURN v_total;
END;
$$;

-- Recompute the 1-day rollups of the given local days (each given as its local midnight) in zone p_tz, from
-- the hourly rollups when the zone's offset is a whole number of hours on that day, else from 1-minute ones.
CREATE FUNCTION occ_refresh_days(p_days timestamptz[], p_tz text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    d timestamptz;
    d_end timestamptz;
    v_source text;
    v_rows bigint;
    v_total bigint := 0;
BEGIN
    FOREACH d IN ARRAY p_days LOOP
        d_end := ((d AT TIME ZONE p_tz) + interval '1 day') AT TIME ZONE p_tz;
        IF extract(epoch FROM (d AT TIME ZONE p_tz) - (d AT TIME ZONE 'UTC'))::bigint % 3600 = 0
           AND extract(epoch FROM (d_end AT TIME ZONE p_tz) - (d_end AT TIME ZONE 'UTC'))::bigint % 3600 = 0 THEN
            v_source := 'readings_1h';
        ELSE
            v_source := 'readings_1m';
        END IF;
        EXECUTE format(
            'INSERT INTO readings_1d AS t (device_id, metric, bucket, cnt, sum_v, min_v, max_v, avg_v, '
            '                              first_v, last_v, first_ts, last_ts) '
            'SELECT device_id, metric, $1, sum(cnt)::bigint, sum(sum_v), min(min_v), max(max_v), '
            '       sum(sum_v) / sum(cnt)::double precision, '
            '       (array_agg(first_v ORDER BY first_ts))[1], (array_agg(last_v ORDER BY last_ts DESC))[1], '
            '       min(first_ts), max(last_ts) '
            'FROM %I WHERE bucket >= $1 AND bucket < $2 '
            'GROUP BY device_id, metric '
            'ON CONFLICT (device_id, metric, bucket) DO UPDATE '
            'SET cnt = excluded.cnt, sum_v = excluded.sum_v, min_v = excluded.min_v, max_v = excluded.max_v, '
            '    avg_v = excluded.avg_v, first_v = excluded.first_v, last_v = excluded.last_v, '
            '    first_ts = excluded.first_ts, last_ts = excluded.last_ts',
            v_source) USING d, d_end;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_total := v_total + v_rows;
    END LOOP;
    RETURN v_total;
END;
$$;
