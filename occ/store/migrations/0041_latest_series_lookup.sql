-- occ_batch_written (0035, 0036) found each series' (device_id, metric) by joining `series` to the batch's arrays.
-- Inside PL/pgSQL the statement runs on a generic plan, which cannot see how long the arrays are and guesses ten
-- rows; against a `series` table of a few thousand rows it then prefers a hash join over a sequential scan of the
-- whole of `series`, on every batch. Measured with 5,000 series: 0.44 ms of the 1.04 ms that a 15-reading batch's
-- `latest` upsert took, growing with the number of series (a province of 10,000 devices has ~50,000), and the
-- small batches of the live stream are exactly where this ran (issue 8: latency at half load). A LATERAL
-- subquery that the planner may not pull up (OFFSET 0) makes the lookup one primary-key probe per row.
CREATE OR REPLACE FUNCTION occ_batch_written(
    p_series integer[], p_ts_us bigint[], p_values double precision[], p_quality smallint[],
    p_received_at timestamptz, p_hours timestamptz[], p_touched integer[]
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO latest AS l (device_id, metric, ts, value, quality, received_at)
    SELECT s.device_id, s.metric, timestamptz '2000-01-01 00:00:00+00' + u.us * interval '1 microsecond',
           u.v, u.q, p_received_at
    FROM unnest(p_series, p_ts_us, p_values, p_quality) AS u(sid, us, v, q)
    CROSS JOIN LATERAL (SELECT device_id, metric FROM series WHERE id = u.sid OFFSET 0) AS s
    ORDER BY u.sid
    ON CONFLICT (device_id, metric) DO UPDATE
        SET ts = excluded.ts, value = excluded.value, quality = excluded.quality, received_at = excluded.received_at
        WHERE excluded.ts > l.ts;
    INSERT INTO rollup_dirty (bucket, series) SELECT h, p_touched FROM unnest(p_hours) AS h;
END;
$$;
