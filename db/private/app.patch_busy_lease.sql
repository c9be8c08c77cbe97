/**
 * How long a PATCH's word that it is at work on an upload holds unless renewed
 * (api.upload_claim sets it, each api.upload_checkpoint and api.upload_busy
 * renews it): longer than
 * the converter's grace for a last checkpoint after a cut (3 s), short enough
 * that a HEAD waits little for a PATCH whose replica died.
 */
CREATE FUNCTION app.patch_busy_lease() RETURNS interval
    LANGUAGE sql
    IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT interval '6 seconds';
$$;

REVOKE ALL ON FUNCTION app.patch_busy_lease() FROM PUBLIC;

COMMENT ON FUNCTION app.patch_busy_lease() IS
    'How long a PATCH is taken to be at work on an upload after its claim or last checkpoint.';
