/**
 * Where a record stands in its user's listing, as an opaque text a client
 * passes back for the records after it: base64url of the record's created_at
 * (microseconds since 1970) and id, 32 characters.
 */
CREATE FUNCTION app.listing_cursor(created_at timestamptz, id uuid) RETURNS text
    LANGUAGE sql
    IMMUTABLE
    STRICT
    PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    RETURN translate(
        encode(int8send((extract(epoch FROM created_at) * 1000000)::bigint) || uuid_send(id), 'base64'),
        '+/', '-_'
    );

REVOKE ALL ON FUNCTION app.listing_cursor(timestamptz, uuid) FROM PUBLIC;

COMMENT ON FUNCTION app.listing_cursor(timestamptz, uuid) IS
    'A record''s place in its user''s listing, as the opaque cursor clients pass back.';

/**
 * The position a cursor of app.listing_cursor names; PT400 for any text that
 * is not one (a client may send anything).
 */
CREATE FUNCTION app.listing_cursor(cursor text, OUT created_at timestamptz, OUT id uuid)
    LANGUAGE plpgsql
    IMMUTABLE
    STRICT
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    raw bytea;
BEGIN
    IF cursor !~ '^[A-Za-z0-9_-]{32}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'The cursor is not one this service gave.';
    END IF;
    raw := decode(translate(cursor, '-_', '+/'), 'base64');
    -- The microseconds as an interval from text: exact, where to_timestamp()
    -- would go through a double.
    created_at := timestamptz 'epoch'
        + (('x' || encode(substring(raw FROM 1 FOR 8), 'hex'))::bit(64)::bigint || ' microseconds')::interval;
    id := encode(substring(raw FROM 9 FOR 16), 'hex')::uuid;
EXCEPTION
    WHEN data_exception THEN  -- microseconds past what a timestamp holds
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'The cursor is not one this service gave.';
END;
$$;

REVOKE ALL ON FUNCTION app.listing_cursor(text) FROM PUBLIC;

COMMENT ON FUNCTION app.listing_cursor(text) IS
    'The created_at and id a cursor of app.listing_cursor(timestamptz, uuid) names; PT400 otherwise.';
