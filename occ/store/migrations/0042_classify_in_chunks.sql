-- Classify new series in chunks (issue 8: latency at half load). occ_classify_series() (0033) decided every
-- unclassified series in one statement: with 7,000 new series (a fleet's first minutes) that statement held a core
-- for 0.6-0.8 s inside the ingest's maintenance, and on a busy two-core machine every write queued behind it
-- (publish->commit up to 170 ms for that second). Maintenance now calls this once per chunk of series ids, in id
-- order, and paces the chunks (occ/store/rollups.py).
--
-- Examines the first p_limit unclassified series with an id above p_after; decides the level of those with at
-- least two readings and marks the hours holding their readings dirty for them, as 0033 did. `last_id` is the
-- highest id examined (NULL: none was left), the next call's p_after.
CREATE FUNCTION occ_classify_series_after(
    p_after integer, p_limit integer, OUT classified integer, OUT last_id integer
)
LANGUAGE plpgsql AS $$
DECLARE
    v_ids integer[];
BEGIN
    SELECT max(c.id) INTO last_id
    FROM (SELECT id FROM series WHERE id > p_after AND level IS NULL ORDER BY id LIMIT p_limit) AS c;
    classified := 0;
    IF last_id IS NULL THEN
        RETURN;
    END IF;
    WITH st AS (
        SELECT s.id, x.n, extract(epoch FROM x.hi - x.lo) AS span
        FROM series AS s
        CROSS JOIN LATERAL (SELECT count(*) AS n, min(r.ts) AS lo, max(r.ts) AS hi
                            FROM series_readings AS r WHERE r.series_id = s.id) AS x
        WHERE s.id > p_after AND s.id <= last_id AND s.level IS NULL AND x.n >= 2
    ), decided AS (
        UPDATE series AS s SET interval_s = st.span / (st.n - 1), level = occ_rollup_level(st.span / (st.n - 1))
        FROM st WHERE s.id = st.id
        RETURNING s.id
    )
    SELECT array_agg(id ORDER BY id) INTO v_ids FROM decided;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO rollup_dirty (bucket, series)
    SELECT h.hour, array_agg(h.series_id ORDER BY h.series_id)
    FROM (SELECT DISTINCT date_trunc('hour', r.ts, 'UTC') AS hour, r.series_id
          FROM series_readings AS r WHERE r.series_id = ANY(v_ids)) AS h
    GROUP BY h.hour ORDER BY h.hour;
    classified := cardinality(v_ids);
END;
$$;

DROP FUNCTION occ_classify_series();
