/**
 * Removes uploads past their expiry, finished or not (their MP3 so far goes
 * with them; a finished one's record stays), at most `most` in one call;
 * returns how many. Every replica of the service calls it now and then: rows
 * another one is sweeping, or a PATCH is writing, are skipped, not waited for.
 */
CREATE FUNCTION api.uploads_sweep(most integer)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    swept integer;
BEGIN
    WITH expired AS (
        SELECT u.id FROM app.uploads AS u
        WHERE u.expires_at <= now()
        ORDER BY u.expires_at
        LIMIT most
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM app.uploads AS u USING expired WHERE u.id = expired.id;
    GET DIAGNOSTICS swept = ROW_COUNT;
    RETURN swept;
END;
$$;

COMMENT ON FUNCTION api.uploads_sweep(integer) IS
    'Removes expired resumable uploads (at most most at a time); returns how many.';
