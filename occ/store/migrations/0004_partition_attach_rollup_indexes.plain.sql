-- Plain path, after the first schema: partitions are built and then attached, and the rollup tables get an
-- index on bucket.
--
-- ATTACH PARTITION takes only a SHARE UPDATE EXCLUSIVE lock on readings, which ingest (COPY) and queries do
-- not wait for; CREATE TABLE ... PARTITION OF (used by 0002 for empty ranges) takes a lock they all queue
-- behind. Refresh reads and rewrites whole time ranges across devices and retention deletes by time, which
-- without an index on bucket means scanning the whole rollup table.

CREATE OR REPLACE FUNCTION occ_create_partition(p_lo timestamptz, p_hi timestamptz)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_lo timestamptz := p_lo;
    v_hi timestamptz := p_hi;
    v_name text;
    r record;
BEGIN
    -- Serialise partition DDL between processes (every worker calls occ_ensure_partitions at startup).
    PERFORM pg_advisory_xact_lock(hashtext('occ.readings_partitions'));
    FOR r IN SELECT lo, hi FROM readings_partitions WHERE lo < v_hi AND hi > v_lo ORDER BY lo LOOP
        IF r.lo <= v_lo THEN
            v_lo := greatest(v_lo, r.hi);
        ELSE
            v_hi := least(v_hi, r.lo);
        END IF;
    END LOOP;
    IF v_lo >= v_hi THEN
        RETURN NULL;
    END IF;
    v_name := 'readings_p' || to_char(v_lo AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MI');
    -- Build the table, then attach it: ATTACH takes only a SHARE UPDATE EXCLUSIVE lock on readings, which
    -- ingest (COPY) and queries do not wait for, where CREATE ... PARTITION OF would lock them all out.
    -- Rows of this range already in the default partition move first (attach checks the bounds and builds
    -- the indexes).
    EXECUTE format('CREATE TABLE %I (LIKE readings INCLUDING DEFAULTS)', v_name);
    IF EXISTS (SELECT 1 FROM readings_default WHERE ts >= v_lo AND ts < v_hi) THEN
        EXECUTE format('WITH moved AS (DELETE FROM readings_default WHERE ts >= $1 AND ts < $2 RETURNING *) '
                       'INSERT INTO %I SELECT * FROM moved', v_name) USING v_lo, v_hi;
    END IF;
    EXECUTE format('ALTER TABLE readings ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', v_name, v_lo, v_hi);
    INSERT INTO readings_partitions (name, lo, hi) VALUES (v_name, v_lo, v_hi);
    RETURN v_name;
END;
$$;

CREATE INDEX readings_1m_bucket_idx ON readings_1m (bucket);
CREATE INDEX readings_1h_bucket_idx ON readings_1h (bucket);
CREATE INDEX readings_1d_bucket_idx ON readings_1d (bucket);
