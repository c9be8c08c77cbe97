/**
 * An authenticated user's finished record's waveform (audiowaveform's .dat,
 * version 2), with the record's SHA-256 (the service's ETag is made of it).
 * PT401 for wrong credentials; PT404 for a missing record, another user's, or
 * one with no waveform (measured before there were waveforms, or with the
 * measurement off).
 */
CREATE FUNCTION api.record_waveform(user_id bigint, token text, record_id uuid)
RETURNS TABLE (sha256 bytea, waveform bytea)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM FROM api.user_check(user_id, token);

    RETURN QUERY
    SELECT r.sha256, r.waveform
    FROM app.records AS r
    WHERE r.id = record_id
      AND r.user_id = record_waveform.user_id
      AND r.size IS NOT NULL
      AND r.waveform IS NOT NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'PT404', MESSAGE = 'No such record, or it has no waveform.';
    END IF;
END;
$$;

COMMENT ON FUNCTION api.record_waveform(bigint, text, uuid) IS
    'One of the user''s finished records'' waveform (audiowaveform .dat v2) and SHA-256; PT404 otherwise.';
