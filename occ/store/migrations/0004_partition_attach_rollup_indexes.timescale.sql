-- Nothing to do on TimescaleDB: chunks are made by the extension, and the continuous aggregates'
-- materialization hypertables are indexed on their bucket already. (The plain variant changes how partitions
-- are created and indexes the rollup tables.)
SELECT 1;
