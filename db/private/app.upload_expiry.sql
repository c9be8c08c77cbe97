/**
 * When an upload given `lifetime_s` more seconds expires (api.upload_create, and
 * every call that extends it). PT400 unless `lifetime_s` is a positive, finite
 * number: from psql, 0 or less would expire the upload at once (the sweep would
 * take it in the middle of its PATCH), and NaN or infinity never.
 */
CREATE FUNCTION app.upload_expiry(lifetime_s double precision) RETURNS timestamptz
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- NULL and NaN fail both comparisons (PostgreSQL sorts NaN above infinity).
    IF (lifetime_s > 0 AND lifetime_s < 'Infinity') IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = format('An upload''s lifetime is a positive number of seconds, not %s.', lifetime_s);
    END IF;
    RETURN now() + make_interval(secs => lifetime_s);
END;
$$;

REVOKE ALL ON FUNCTION app.upload_expiry(double precision) FROM PUBLIC;

COMMENT ON FUNCTION app.upload_expiry(double precision) IS
    'When an upload given lifetime_s more seconds expires; PT400 unless that is a positive, finite number.';
