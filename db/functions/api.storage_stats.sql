/**
 * How much the service stores: finished records and their MP3 bytes. For
 * /metrics and for an admin; reveals no record, user or name.
 */
CREATE FUNCTION api.storage_stats()
RETURNS TABLE (records bigint, bytes bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*), coalesce(sum(r.size), 0)::bigint
    FROM app.records AS r
    WHERE r.size IS NOT NULL;
$$;

COMMENT ON FUNCTION api.storage_stats() IS
    'Counts finished records and their bytes (for /metrics).';
