-- Nothing to do on TimescaleDB: continuous aggregates are refreshed by range already (see the .plain variant).
SELECT 1;
