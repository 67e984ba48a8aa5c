-- Nothing to do on plain PostgreSQL: occ_refresh_range (0031) and occ_refresh_days (0030) exist already.
SELECT 1;
