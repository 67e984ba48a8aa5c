-- Alerts engine state as checkpoint + journal (issue 6, end-to-end throughput). Before, every engine step upserted
-- the snapshot of each instance a reading touched (about six rows per reading, each step fsync'd). Now a step
-- commits one journal row (the engine's inputs of that step, as recorded by the pure core) with its transitions,
-- and `alert_engine_state` is rewritten only at checkpoints, every few seconds, with what changed since the last
-- one. Restart: load the checkpoint, replay the journal rows after `journal_seq`, in order.

CREATE TABLE alert_engine_journal (
    seq          bigint PRIMARY KEY,       -- assigned by the service, increasing
    records      bytea NOT NULL,           -- orjson array of the step's input records (alerts.engine.Engine.replay)
    recorded_at  timestamptz NOT NULL
);

-- One row: the journal position the rows of alert_engine_state reflect (0 = none).
CREATE TABLE alert_engine_checkpoint (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    journal_seq  bigint NOT NULL,
    taken_at     timestamptz NOT NULL
);
