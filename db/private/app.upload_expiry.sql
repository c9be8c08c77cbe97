/**
 * When an upload given `lifetime_s` more seconds expires (api.upload_create, and
 * every call that extends it). PT400 unless `lifetime_s` is from 1 second to 30
 * days, as the service's UPLOAD_EXPIRY_S must be: from psql, less would expire
 * the upload at once (the sweep would take it in the middle of its PATCH), and
 * much more, or NaN or infinity, never.
 */
CREATE FUNCTION app.upload_expiry(lifetime_s double precision) RETURNS timestamptz
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- NULL fails the comparisons, and NaN the second (PostgreSQL sorts NaN above infinity).
    IF (lifetime_s >= 1 AND lifetime_s <= 2592000) IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = format('An upload''s lifetime is from 1 to 2592000 seconds (30 days), not %s.', lifetime_s);
    END IF;
    RETURN now() + make_interval(secs => lifetime_s);
END;
$$;

REVOKE ALL ON FUNCTION app.upload_expiry(double precision) FROM PUBLIC;

COMMENT ON FUNCTION app.upload_expiry(double precision) IS
    'When an upload given lifetime_s more seconds expires; PT400 unless that is from 1 s to 30 days.';
