/**
 * Deletes an authenticated user's record. Its large object is unlinked in the
 * same transaction by the trigger on app.records. A missing record and
 * another user's record raise the same PT404.
 */
CREATE FUNCTION api.record_delete(user_id bigint, token text, record_id uuid)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM FROM api.user_check(user_id, token);

    DELETE FROM app.records AS r
    WHERE r.id = record_id AND r.user_id = record_delete.user_id AND r.size IS NOT NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'PT404', MESSAGE = 'No such record.';
    END IF;
END;
$$;

COMMENT ON FUNCTION api.record_delete(bigint, text, uuid) IS
    'Deletes one of the user''s records and its MP3.';
