-- Rollup upkeep proportional to what changed (issue 12): maintenance recomputed every series of a dirty hour or
-- day, so 72,000 backfilled readings (5 % of the stations, one old day) cost a recomputation of that day for all
-- 10,000 series (13.7 s). Writers now also record WHICH series a batch touched, and maintenance recomputes only
-- those (series, hour) and (series, day) pairs, through the primary keys (series_id, ts) and (series_id, bucket).
-- A live hour is touched by most series anyway; there maintenance still recomputes the whole hour in one range
-- pass (rollups.py decides from the number of series touched), which is cheaper than one probe per series.
-- Both storage paths have the series layout now (0030 plain, 0032 TimescaleDB), so this file is common.

-- The series a dirty row's batch touched (sorted ids); NULL means every series (rows written before this
-- migration, and whole-hour marks).
ALTER TABLE rollup_dirty ADD COLUMN series integer[];
ALTER TABLE rollup_dirty_days ADD COLUMN series integer[];

-- Decide the level of every series that has none yet and now has two readings; the hours holding their readings
-- are marked dirty for those series only, so that the refresh builds their rollups. Returns how many were decided.
CREATE OR REPLACE FUNCTION occ_classify_series()
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_ids integer[];
BEGIN
    WITH st AS (
        SELECT s.id, x.n, extract(epoch FROM x.hi - x.lo) AS span
        FROM series AS s
        CROSS JOIN LATERAL (SELECT count(*) AS n, min(r.ts) AS lo, max(r.ts) AS hi
                            FROM series_readings AS r WHERE r.series_id = s.id) AS x
        WHERE s.level IS NULL AND x.n >= 2
    ), decided AS (
        UPDATE series AS s SET interval_s = st.span / (st.n - 1), level = occ_rollup_level(st.span / (st.n - 1))
        FROM st WHERE s.id = st.id
        RETURNING s.id
    )
    SELECT array_agg(id ORDER BY id) INTO v_ids FROM decided;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    INSERT INTO rollup_dirty (bucket, series)
    SELECT h.hour, array_agg(h.series_id ORDER BY h.series_id)
    FROM (SELECT DISTINCT date_trunc('hour', r.ts, 'UTC') AS hour, r.series_id
          FROM series_readings AS r WHERE r.series_id = ANY(v_ids)) AS h
    GROUP BY h.hour ORDER BY h.hour;
    RETURN cardinality(v_ids);
END;
$$;

-- Recompute the 1-minute and 1-hour rollups of the (hour, series) pairs listed by the rollup_dirty rows p_ids
-- (rows with a series list), for the series that keep those levels: one index range scan per pair.
CREATE FUNCTION occ_refresh_series_hours(p_ids bigint[])
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_rows bigint;
    v_total bigint := 0;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS occ_refresh_pairs (hour timestamptz, series_id integer, level smallint)
        ON COMMIT DROP;
    TRUNCATE occ_refresh_pairs;
    INSERT INTO occ_refresh_pairs (hour, series_id, level)
    SELECT p.bucket, p.sid, s.level
    FROM (SELECT DISTINCT d.bucket, u.sid FROM rollup_dirty AS d CROSS JOIN LATERAL unnest(d.series) AS u(sid)
          WHERE d.id = ANY(p_ids)) AS p
    JOIN series AS s ON s.id = p.sid AND s.level <= 1;
    IF EXISTS (SELECT 1 FROM occ_refresh_pairs WHERE level = 0) THEN
        INSERT INTO series_1m AS t (series_id, bucket, cnt, sum_v, min_v, max_v, first_v, last_v, first_ts, last_ts)
        SELECT r.series_id, date_trunc('minute', r.ts, 'UTC'), count(*), sum(r.value), min(r.value), max(r.value),
               (array_agg(r.value ORDER BY r.ts))[1], (array_agg(r.value ORDER BY r.ts DESC))[1],
               min(r.ts), max(r.ts)
        FROM occ_refresh_pairs AS p
        JOIN series_readings AS r ON r.series_id = p.series_id AND r.ts >= p.hour AND r.ts < p.hour + interval '1 hour'
        WHERE p.level = 0
        GROUP BY 1, 2
        ON CONFLICT (series_id, bucket) DO UPDATE
        SET cnt = excluded.cnt, sum_v = excluded.sum_v, min_v = excluded.min_v, max_v = excluded.max_v,
            first_v = excluded.first_v, last_v = excluded.last_v,
            first_ts = excluded.first_ts, last_ts = excluded.last_ts;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_total := v_total + v_rows;
    END IF;
    INSERT INTO series_1h AS t (series_id, bucket, cnt, sum_v, min_v, max_v, first_v, last_v, first_ts, last_ts)
    SELECT r.series_id, p.hour, count(*), sum(r.value), min(r.value), max(r.value),
           (array_agg(r.value ORDER BY r.ts))[1], (array_agg(r.value ORDER BY r.ts DESC))[1],
           min(r.ts), max(r.ts)
    FROM occ_refresh_pairs AS p
    JOIN series_readings AS r ON r.series_id = p.series_id AND r.ts >= p.hour AND r.ts < p.hour + interval '1 hour'
    GROUP BY r.series_id, p.hour
    ON CONFLICT (series_id, bucket) DO UPDATE
    SET cnt = excluded.cnt, sum_v = excluded.sum_v, min_v = excluded.min_v, max_v = excluded.max_v,
        first_v = excluded.first_v, last_v = excluded.last_v,
        first_ts = excluded.first_ts, last_ts = excluded.last_ts;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_total + v_rows;
END;
$$;

-- Recompute the 1-day rollups of the (day, series) pairs that rollup_dirty_days lists for the local days p_days
-- (rows with a series list) in zone p_tz, for the series that keep daily rollups: from their hourly rollups when
-- they keep those and the zone's offset is a whole number of hours that day, else from raw readings (as
-- occ_refresh_days does for whole days).
CREATE FUNCTION occ_refresh_series_days(p_days timestamptz[], p_tz text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_rows bigint;
BEGIN
    WITH p AS (
        SELECT d.day, u.sid, s.level, ((d.day AT TIME ZONE p_tz) + interval '1 day') AT TIME ZONE p_tz AS day_end
        FROM rollup_dirty_days AS d
        CROSS JOIN LATERAL unnest(d.series) AS u(sid)
        JOIN series AS s ON s.id = u.sid AND s.level <= 2
        WHERE d.day = ANY(p_days) AND d.series IS NOT NULL
    ), ph AS (
        SELECT p.day, p.sid, p.level, p.day_end,
               extract(epoch FROM (p.day AT TIME ZONE p_tz) - (p.day AT TIME ZONE 'UTC'))::bigint % 3600 = 0
               AND extract(epoch FROM (p.day_end AT TIME ZONE p_tz) - (p.day_end AT TIME ZONE 'UTC'))::bigint % 3600 = 0
               AS hourly
        FROM p
    )
    INSERT INTO series_1d AS t (series_id, bucket, cnt, sum_v, min_v, max_v, first_v, last_v, first_ts, last_ts)
    SELECT x.sid, x.day, sum(x.cnt), sum(x.sum_v), min(x.min_v), max(x.max_v),
           (array_agg(x.first_v ORDER BY x.first_ts))[1], (array_agg(x.last_v ORDER BY x.last_ts DESC))[1],
           min(x.first_ts), max(x.last_ts)
    FROM (
        SELECT ph.sid, ph.day, h.cnt, h.sum_v, h.min_v, h.max_v, h.first_v, h.last_v, h.first_ts, h.last_ts
        FROM ph JOIN series_1h AS h ON h.series_id = ph.sid AND h.bucket >= ph.day AND h.bucket < ph.day_end
        WHERE ph.hourly AND ph.level <= 1
        UNION ALL
        SELECT ph.sid, ph.day, 1, r.value, r.value, r.value, r.value, r.value, r.ts, r.ts
        FROM ph JOIN series_readings AS r ON r.series_id = ph.sid AND r.ts >= ph.day AND r.ts < ph.day_end
        WHERE ph.level = 2 OR (ph.level <= 1 AND NOT ph.hourly)
    ) AS x
    GROUP BY x.sid, x.day
    ON CONFLICT (series_id, bucket) DO UPDATE
    SET cnt = excluded.cnt, sum_v = excluded.sum_v, min_v = excluded.min_v, max_v = excluded.max_v,
        first_v = excluded.first_v, last_v = excluded.last_v,
        first_ts = excluded.first_ts, last_ts = excluded.last_ts;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END;
$$;

-- Mark the local days of refreshed hours for their daily rollups: p_hours[i] lies in the local day p_days[i];
-- p_whole[i] says the hour was recomputed for every series (the day is then marked for every series too), else
-- the day is marked for the series that the rollup_dirty rows p_ids list for that hour. A day already marked
-- keeps the union (NULL, every series, absorbs any list).
CREATE FUNCTION occ_mark_days(p_hours timestamptz[], p_days timestamptz[], p_whole boolean[], p_ids bigint[])
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO rollup_dirty_days AS t (day, series)
    SELECT m.day,
           CASE WHEN bool_or(m.whole) THEN NULL
                ELSE (SELECT array_agg(DISTINCT u.sid ORDER BY u.sid)
                      FROM rollup_dirty AS d CROSS JOIN LATERAL unnest(d.series) AS u(sid)
                      WHERE d.id = ANY(p_ids) AND d.bucket = ANY(array_agg(m.hour))) END
    FROM unnest(p_hours, p_days, p_whole) AS m(hour, day, whole)
    GROUP BY m.day
    ORDER BY m.day
    ON CONFLICT (day) DO UPDATE
    SET series = CASE WHEN t.series IS NULL OR excluded.series IS NULL THEN NULL
                      ELSE ARRAY(SELECT DISTINCT x FROM unnest(t.series || excluded.series) AS x ORDER BY x) END;
$$;
