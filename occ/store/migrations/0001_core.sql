-- Core tables shared by both storage modes (ARCHITECTURE §4). The readings table and its rollups differ by
-- mode and live in 0002/0003. No foreign keys on the ingest path: a reading for a device that is registered
-- later (or unprovisioned) must never fail a batch.

CREATE TABLE devices (
    id          text PRIMARY KEY,
    kind        text NOT NULL,
    name        text NOT NULL DEFAULT '',
    lat         double precision,
    lon         double precision,
    area        text,
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb,
    provisioned boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_kind_idx ON devices (kind);
CREATE INDEX devices_area_idx ON devices (area);

-- Latest value per (device, metric): the wall display and the REST API read this, never a scan of readings.
-- Updated in place on every batch, so leave room on each page for HOT updates.
CREATE TABLE latest (
    device_id   text NOT NULL,
    metric      text NOT NULL,
    ts          timestamptz NOT NULL,
    value       double precision NOT NULL,
    quality     smallint NOT NULL DEFAULT 0,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, metric)
) WITH (fillfactor = 70);

CREATE TABLE device_status (
    device_id  text PRIMARY KEY,
    status     text NOT NULL CHECK (status IN ('online', 'offline')),
    since      timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
) WITH (fillfactor = 70);

-- One row per transition (not per status message), so a redelivered retained `online` adds nothing.
CREATE TABLE device_status_history (
    device_id   text NOT NULL,
    ts          timestamptz NOT NULL,
    status      text NOT NULL CHECK (status IN ('online', 'offline')),
    received_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, ts, status)
);

CREATE TABLE events (
    device_id   text NOT NULL,
    ts          timestamptz NOT NULL,
    type        text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}'::jsonb,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, ts, type)
);
CREATE INDEX events_ts_idx ON events (ts);

CREATE TABLE dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL,
    topic       text NOT NULL,
    payload     bytea NOT NULL,
    reason      text NOT NULL,
    client_id   text
);
CREATE INDEX dead_letters_received_at_idx ON dead_letters (received_at);

-- Rollup bookkeeping (both modes). Every write_batch appends one row per UTC hour it touched; the rows are
-- append-only (no unique key, so concurrent writers never wait on each other), and maintenance deletes
-- exactly the rows it has seen after recomputing their hours. A writer that commits during a refresh leaves
-- its own row behind, so its hour is recomputed again: no lost update without any lock on the hot path.
-- History queries treat an hour listed here as not yet rolled up and read raw readings for it.
CREATE TABLE rollup_dirty (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket timestamptz NOT NULL
);
CREATE INDEX rollup_dirty_bucket_idx ON rollup_dirty (bucket);

-- Local days (rollup time zone) whose daily rollup must be recomputed once all their hours are clean.
-- Written only by maintenance, which runs under an advisory lock.
CREATE TABLE rollup_dirty_days (
    day timestamptz PRIMARY KEY
);

-- Apply status messages in order, one round trip per batch. Only a newer, different status changes
-- device_status and adds a history row; a repeated status only refreshes updated_at; an older one is ignored.
CREATE FUNCTION occ_apply_statuses(p_device_ids text[], p_statuses text[], p_ts timestamptz[],
                                   p_received_at timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    cur record;
    changed integer := 0;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_device_ids, 1), 0) LOOP
        INSERT INTO device_status (device_id, status, since, updated_at)
        VALUES (p_device_ids[i], p_statuses[i], p_ts[i], p_received_at)
        ON CONFLICT (device_id) DO NOTHING;
        IF FOUND THEN
            INSERT INTO device_status_history (device_id, ts, status, received_at)
            VALUES (p_device_ids[i], p_ts[i], p_statuses[i], p_received_at)
            ON CONFLICT DO NOTHING;
            changed := changed + 1;
            CONTINUE;
        END IF;
        SELECT status, since INTO cur FROM device_status WHERE device_id = p_device_ids[i] FOR UPDATE;
        IF p_ts[i] > cur.since AND p_statuses[i] <> cur.status THEN
            UPDATE device_status SET status = p_statuses[i], since = p_ts[i], updated_at = p_received_at
            WHERE device_id = p_device_ids[i];
            INSERT INTO device_status_history (device_id, ts, status, received_at)
            VALUES (p_device_ids[i], p_ts[i], p_statuses[i], p_received_at)
            ON CONFLICT DO NOTHING;
            changed := changed + 1;
        ELSIF p_statuses[i] = cur.status THEN
            UPDATE device_status SET updated_at = greatest(updated_at, p_received_at)
            WHERE device_id = p_device_ids[i];
        END IF;
    END LOOP;
    RETURN changed;
END;
$$;
