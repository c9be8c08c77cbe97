/**
 * Returns a finished record for download. No token: the random record id is
 * the secret a download link carries, and the user id must match it. A
 * missing record and another user's record raise the same PT404.
 */
CREATE FUNCTION api.record_open(record_id uuid, user_id bigint)
RETURNS SETOF app.record_info
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT * FROM app.record_info AS i
    WHERE i.id = record_id AND i.user_id = record_open.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'PT404', MESSAGE = 'No such record.';
    END IF;
END;
$$;

COMMENT ON FUNCTION api.record_open(uuid, bigint) IS
    'Returns a finished record of this user for download; PT404 otherwise.';
