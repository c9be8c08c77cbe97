/**
 * How many pieces an upload may keep as sent (api.upload_append) before a
 * PATCH must convert them: each is a row that every later claim reads back,
 * and a client sending a byte a request would otherwise leave a row a byte.
 */
CREATE FUNCTION app.upload_pieces_most() RETURNS integer
    LANGUAGE sql
    IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 64;
$$;

REVOKE ALL ON FUNCTION app.upload_pieces_most() FROM PUBLIC;

COMMENT ON FUNCTION app.upload_pieces_most() IS
    'How many pieces an upload may keep as sent before a PATCH must convert them.';
