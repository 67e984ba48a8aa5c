-- Readings on TimescaleDB (ARCHITECTURE §4): a hypertable with compression and a retention policy.
-- ${chunk_interval}, ${compress_after} and ${retention} are the values given to the first migration;
-- Store.configure() changes the chunk interval and the policies later (settings are not baked into this file,
-- so changing them never changes its checksum).
--
-- Requires TimescaleDB >= 2.11: backfill (ARCHITECTURE §3, up to ingest.max_past_days) lands in compressed
-- chunks, and only 2.11+ enforces the primary key there, which idempotent writes depend on.

CREATE TABLE readings (
    device_id text NOT NULL,
    metric    text NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL,
    quality   smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, metric, ts)
);

-- Old create_hypertable signature: it exists in every 2.x release (the by_range() form needs 2.13+).
-- The default (ts DESC) index is kept: continuous-aggregate refreshes scan hour-long time ranges.
SELECT create_hypertable('readings', 'ts', chunk_time_interval => ${chunk_interval}::interval);

ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'ts DESC'
);

SELECT add_compression_policy('readings', compress_after => ${compress_after}::interval, if_not_exists => true);
SELECT add_retention_policy('readings', drop_after => ${retention}::interval, if_not_exists => true);
