-- Nothing to do on TimescaleDB (see the .plain variant: occ_refresh_range for the plain path's series layout).
SELECT 1;
