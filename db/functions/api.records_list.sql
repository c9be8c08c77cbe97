/**
 * Lists an authenticated user's finished records, newest first.
 */
CREATE FUNCTION api.records_list(user_id bigint, token text)
RETURNS SETOF app.record_info
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM FROM api.user_check(user_id, token);

    RETURN QUERY
    SELECT * FROM app.record_info AS i
    WHERE i.user_id = records_list.user_id
    ORDER BY i.created_at DESC, i.id;
END;
$$;

COMMENT ON FUNCTION api.records_list(bigint, text) IS
    'Lists the user''s records, newest first.';
