/**
 * A finished record's waveform (audiowaveform's .dat, version 2), for the same
 * callers as a download: no token, the random record id is the secret, and the
 * user id must match it. PT404 for a missing record, another user's, or one
 * with no waveform (measured before there were waveforms, or with the
 * measurement off).
 */
CREATE FUNCTION api.record_waveform(record_id uuid, user_id bigint)
RETURNS bytea
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_waveform bytea;
BEGIN
    SELECT r.waveform INTO found_waveform
    FROM app.records AS r
    WHERE r.id = record_id AND r.user_id = record_waveform.user_id AND r.size IS NOT NULL;
    IF found_waveform IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'PT404', MESSAGE = 'No such record, or it has no waveform.';
    END IF;
    RETURN found_waveform;
END;
$$;

COMMENT ON FUNCTION api.record_waveform(uuid, bigint) IS
    'A finished record''s waveform (audiowaveform .dat v2); PT404 otherwise.';
