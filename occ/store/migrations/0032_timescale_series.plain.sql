-- Nothing to do on plain PostgreSQL: migration 0030 moved its readings to integer series ids already (see the
-- .timescale variant, which brings the TimescaleDB path to the same layout).
SELECT 1;
