/**
 * Starts an upload for an authenticated user: creates the record's large
 * object and returns the new record's id. Then call api.record_append for each
 * chunk of MP3 bytes and api.record_finish, all in this same transaction: a
 * record that is not finished by COMMIT makes the COMMIT fail, so an abandoned
 * upload leaves neither row nor large object.
 *
 * The file name is reduced to a safe base name (no directories, no control
 * characters, at most 255 characters); 'recording.wav' when nothing is left.
 * A user whose storage is already at its quota gets PT413 here, and PT507
 * when the service's storage is full, before any conversion work.
 */
CREATE FUNCTION api.record_begin(user_id bigint, token text, filename text)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    base_name text := filename;
    new_id uuid;
BEGIN
    PERFORM FROM api.user_check(user_id, token);
    PERFORM app.assert_within_quota(record_begin.user_id, 1);
    PERFORM app.assert_within_storage_bound(1);

    base_name := regexp_replace(base_name, '^.*[/\\]', '');
    base_name := regexp_replace(base_name, '[[:cntrl:]]', '', 'g');
    base_name := left(btrim(base_name), 255);
    IF base_name IS NULL OR base_name = '' THEN
        base_name := 'recording.wav';
    END IF;

    INSERT INTO app.records (user_id, lo_oid, original_filename)
    VALUES (record_begin.user_id, lo_create(0), base_name)
    RETURNING records.id INTO new_id;

    RETURN new_id;
END;
$$;

COMMENT ON FUNCTION api.record_begin(bigint, text, text) IS
    'Starts an upload; returns the record id to pass to record_append and record_finish.';
