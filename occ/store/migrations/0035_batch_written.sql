-- Everything a batch does after its readings' COPY, in one call (issue 8: latency at half load).
--
-- The write path used ten round trips per batch (BEGIN, SAVEPOINT, the readings' COPY, RELEASE, a COPY of the
-- newest reading per series into a staging table, the `latest` upsert, the dirty-hours insert, COMMIT). On a
-- busy two-core machine every round trip is a hand-over between the ingest and its backend, and each waits for
-- a core: the write of a 170-message batch took four times as long there as on an idle machine. Now a batch is
-- BEGIN, the COPY, and one simple query `SELECT occ_batch_written(...); COMMIT`.
--
-- The newest reading per series comes as arrays keyed by series id (the client has them sorted already);
-- `latest` is still keyed by (device_id, metric) for its readers, so the series table names them here. Rows are
-- upserted in key order, so concurrent writers lock `latest` rows in the same order (no deadlocks), and only
-- forward in time. `p_ts_us` are microseconds since 2000-01-01 UTC (PostgreSQL's own timestamptz epoch).
-- `p_hours`/`p_touched` are the batch's dirty hours and the series it touched (NULL: every series), as 0033.
-- Common to both storage paths: both keep readings under series ids (0030 plain, 0032 TimescaleDB).
CREATE FUNCTION occ_batch_written(
    p_series integer[], p_ts_us bigint[], p_values double precision[], p_quality smallint[],
    p_received_at timestamptz, p_hours timestamptz[], p_touched integer[]
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO latest AS l (device_id, metric, ts, value, quality, received_at)
    SELECT s.device_id, s.metric, timestamptz '2000-01-01 00:00:00+00' + u.us * interval '1 microsecond',
           u.v, u.q, p_received_at
    FROM unnest(p_series, p_ts_us, p_values, p_quality) AS u(sid, us, v, q)
    JOIN series AS s ON s.id = u.sid
    ORDER BY s.device_id, s.metric
    ON CONFLICT (device_id, metric) DO UPDATE
        SET ts = excluded.ts, value = excluded.value, quality = excluded.quality, received_at = excluded.received_at
        WHERE excluded.ts > l.ts;
    INSERT INTO rollup_dirty (bucket, series) SELECT h, p_touched FROM unnest(p_hours) AS h;
END;
$$;
