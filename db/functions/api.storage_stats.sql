/**
 * How much the service stores: finished records and their MP3 bytes, and the
 * bound they count against (0: none). For /metrics, which anyone may ask, and
 * for an admin: one row's running totals, never a scan of the records; reveals
 * no record, user or name.
 */
CREATE FUNCTION api.storage_stats()
RETURNS TABLE (records bigint, bytes bigint, max_bytes bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.records, s.bytes, c.storage_max_bytes
    FROM app.storage AS s, app.settings AS c;
$$;

COMMENT ON FUNCTION api.storage_stats() IS
    'Finished records, their bytes, and the storage bound (for /metrics).';
