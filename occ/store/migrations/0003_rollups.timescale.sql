-- Rollups on TimescaleDB: continuous aggregates with the same columns as the plain-path rollup tables.
-- 1-minute and 1-hour buckets are UTC aligned; 1-day buckets are local days in ${timezone} (time_bucket with a
-- time zone needs TimescaleDB 2.8+; first()/last() in a continuous aggregate need the finalized form, 2.7+).
--
-- materialized_only: history queries never rely on real-time aggregation. Writers record the hours they touch
-- in rollup_dirty; history reads raw readings for those hours, and maintenance refreshes them with
-- refresh_continuous_aggregate() (which also catches backfill older than the policy windows below).
-- The policies keep recent buckets materialized without the platform's help. Each policy window spans many
-- buckets and starts well inside the retention period, so a refresh never meets dropped raw chunks.

CREATE MATERIALIZED VIEW readings_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
SELECT device_id,
       metric,
       time_bucket(INTERVAL '1 minute', ts) AS bucket,
       count(*) AS cnt,
       sum(value) AS sum_v,
       min(value) AS min_v,
       max(value) AS max_v,
       avg(value) AS avg_v,
       first(value, ts) AS first_v,
       last(value, ts) AS last_v,
       min(ts) AS first_ts,
       max(ts) AS last_ts
FROM readings
GROUP BY device_id, metric, time_bucket(INTERVAL '1 minute', ts)
WITH NO DATA;

CREATE MATERIALIZED VIEW readings_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
SELECT device_id,
       metric,
       time_bucket(INTERVAL '1 hour', ts) AS bucket,
       count(*) AS cnt,
       sum(value) AS sum_v,
       min(value) AS min_v,
       max(value) AS max_v,
       avg(value) AS avg_v,
       first(value, ts) AS first_v,
       last(value, ts) AS last_v,
       min(ts) AS first_ts,
       max(ts) AS last_ts
FROM readings
GROUP BY device_id, metric, time_bucket(INTERVAL '1 hour', ts)
WITH NO DATA;

CREATE MATERIALIZED VIEW readings_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
SELECT device_id,
       metric,
       time_bucket(INTERVAL '1 day', ts, ${timezone}) AS bucket,
       count(*) AS cnt,
       sum(value) AS sum_v,
       min(value) AS min_v,
       max(value) AS max_v,
       avg(value) AS avg_v,
       first(value, ts) AS first_v,
       last(value, ts) AS last_v,
       min(ts) AS first_ts,
       max(ts) AS last_ts
FROM readings
GROUP BY device_id, metric, time_bucket(INTERVAL '1 day', ts, ${timezone})
WITH NO DATA;

SELECT add_continuous_aggregate_policy('readings_1m',
    start_offset => INTERVAL '1 day',
    end_offset => INTERVAL '2 minutes',
    schedule_interval => INTERVAL '5 minutes',
    if_not_exists => true);
SELECT add_continuous_aggregate_policy('readings_1h',
    start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes',
    if_not_exists => true);
SELECT add_continuous_aggregate_policy('readings_1d',
    start_offset => INTERVAL '7 days',
    end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour',
    if_not_exists => true);

-- 1-minute rollups are about as large as the raw data they summarise: keep them as long as the raw data.
-- Hourly and daily rollups are small and outlive raw retention.
SELECT add_retention_policy('readings_1m', drop_after => ${retention}::interval, if_not_exists => true);
