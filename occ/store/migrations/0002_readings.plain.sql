-- Readings on plain PostgreSQL (ARCHITECTURE §4): native range partitioning by time. Partitions are created
-- ahead of time by occ_ensure_partitions() (the platform calls it at startup and from maintenance); a DEFAULT
-- partition catches anything outside them (a far backfill, a clock error) so a write never fails for want of
-- a partition; maintenance later moves such rows into proper partitions. Retention drops whole partitions.

CREATE TABLE readings (
    device_id text NOT NULL,
    metric    text NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL,
    quality   smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, metric, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE readings_default PARTITION OF readings DEFAULT;

-- Readings arrive roughly in time order, so a BRIN index on ts is tiny and serves the time-range scans of
-- rollup refresh and retention; per-device queries use the primary key.
CREATE INDEX readings_ts_brin ON readings USING brin (ts);

-- The partitions this platform made, with their bounds (easier and safer than parsing pg_get_expr output).
CREATE TABLE readings_partitions (
    name text PRIMARY KEY,
    lo   timestamptz NOT NULL,
    hi   timestamptz NOT NULL,
    CHECK (lo < hi)
);

-- Create the partition [p_lo, p_hi), clipped against existing ones (the width may have changed since they
-- were made). Rows already in the default partition for that range are moved into it. Returns the new
-- partition's name, or NULL when the range was already covered.
CREATE FUNCTION occ_create_partition(p_lo timestamptz, p_hi timestamptz)
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
    IF EXISTS (SELECT 1 FROM readings_default WHERE ts >= v_lo AND ts < v_hi) THEN
        -- CREATE ... PARTITION OF would fail on the rows in the default partition: build the table,
        -- move the rows, then attach it (attach builds the indexes and checks the bounds).
        EXECUTE format('CREATE TABLE %I (LIKE readings INCLUDING DEFAULTS)', v_name);
        EXECUTE format('WITH moved AS (DELETE FROM readings_default WHERE ts >= $1 AND ts < $2 RETURNING *) '
                       'INSERT INTO %I SELECT * FROM moved', v_name) USING v_lo, v_hi;
        EXECUTE format('ALTER TABLE readings ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       v_name, v_lo, v_hi);
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                       v_name, v_lo, v_hi);
    END IF;
    INSERT INTO readings_partitions (name, lo, hi) VALUES (v_name, v_lo, v_hi);
    RETURN v_name;
END;
$$;

-- Partition slots are p_days wide, aligned on Monday 2000-01-03 00:00 UTC.
CREATE FUNCTION occ_partition_slot(p_ts timestamptz, p_days integer)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT date_bin(make_interval(days => p_days), p_ts, timestamptz '2000-01-03 00:00:00+00')
$$;

-- Make sure partitions exist from the slot before p_now's through p_ahead slots after it.
-- Returns how many were created. Called at startup and by maintenance.
CREATE FUNCTION occ_ensure_partitions(p_now timestamptz, p_days integer, p_ahead integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_width interval := make_interval(days => p_days);
    v_start timestamptz := occ_partition_slot(p_now, p_days) - make_interval(days => p_days);
    v_created integer := 0;
    k integer;
BEGIN
    FOR k IN 0 .. p_ahead + 1 LOOP
        IF occ_create_partition(v_start + k * v_width, v_start + (k + 1) * v_width) IS NOT NULL THEN
            v_created := v_created + 1;
        END IF;
    END LOOP;
    RETURN v_created;
END;
$$;

-- Move rows out of the default partition into partitions of their own (creating them), and delete the
-- ones older than the retention cutoff. Returns the number of rows that were in the default partition.
CREATE FUNCTION occ_relocate_default(p_days integer, p_cutoff timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_rows bigint;
    v_deleted bigint;
    v_slot timestamptz;
BEGIN
    SELECT count(*) INTO v_rows FROM readings_default;
    IF v_rows = 0 THEN
        RETURN 0;
    END IF;
    DELETE FROM readings_default WHERE ts < p_cutoff;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    FOR v_slot IN SELECT DISTINCT occ_partition_slot(ts, p_days) FROM readings_default ORDER BY 1 LOOP
        PERFORM occ_create_partition(v_slot, v_slot + make_interval(days => p_days));
    END LOOP;
    RETURN v_rows;
END;
$$;

-- Drop partitions that lie wholly before the retention cutoff. Returns how many were dropped.
CREATE FUNCTION occ_drop_partitions(p_cutoff timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_dropped integer := 0;
BEGIN
    FOR r IN SELECT name FROM readings_partitions WHERE hi <= p_cutoff ORDER BY lo LOOP
        EXECUTE format('DROP TABLE IF EXISTS %I', r.name);
        DELETE FROM readings_partitions WHERE name = r.name;
        v_dropped := v_dropped + 1;
    END LOOP;
    RETURN v_dropped;
END;
$$;
