-- TimescaleDB path, issue 12: nothing here. The plain path's 0030 moves readings to integer series ids; on
-- TimescaleDB compressed chunks already store the text keys once per segment (about 10 B per reading), so the
-- hypertable keeps its layout and its continuous aggregates.
SELECT 1;
