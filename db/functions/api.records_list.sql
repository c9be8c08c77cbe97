/**
 * Lists an authenticated user's finished records, newest first (ties by id),
 * a page at a time: at most page_size records (NULL: all of them), after the
 * record whose cursor column is given (NULL: from the newest).
 *
 * Keyset paging, not OFFSET: a page costs the same however deep it is, and a
 * walk through the pages sees every record that existed when it began exactly
 * once, whatever is added or deleted meanwhile.
 */
CREATE FUNCTION api.records_list(user_id bigint, token text, page_size integer DEFAULT NULL, cursor text DEFAULT NULL)
RETURNS SETOF app.record_info
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- With no cursor, a position after every record: created_at is never infinity.
    after_created_at timestamptz := 'infinity';
    after_id uuid := 'ffffffff-ffff-ffff-ffff-ffffffffffff';
BEGIN
    PERFORM FROM api.user_check(user_id, token);
    IF page_size < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'The page size must be at least 1.';
    END IF;
    IF cursor IS NOT NULL THEN
        SELECT c.created_at, c.id INTO after_created_at, after_id FROM app.listing_cursor(cursor) AS c;
    END IF;

    RETURN QUERY
    SELECT * FROM app.record_info AS i
    WHERE i.user_id = records_list.user_id
      AND (i.created_at, i.id) < (after_created_at, after_id)
    ORDER BY i.created_at DESC, i.id DESC
    LIMIT page_size;
END;
$$;

COMMENT ON FUNCTION api.records_list(bigint, text, integer, text) IS
    'Lists the user''s records, newest first; page_size at a time after a record''s cursor (NULL: all, from the newest).';
