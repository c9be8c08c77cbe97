/**
 * For the api functions that add a resumable upload's bytes, each in a short
 * transaction of its own (api.upload_checkpoint, api.upload_append): the
 * service's running totals locked, then the user's row when a quota is set,
 * both until the transaction ends. Two uploads adding at once are then checked
 * one after the other, the second seeing what the first added, so they cannot
 * both slip past the bound or the quota (each check alone reads only what was
 * committed before it). The totals come first even for a quota alone: that is
 * the order api.record_finish and the trigger that counts stored bytes take
 * them in, and a transaction holding the user's row while it waits for the
 * totals would deadlock with one of those. The user's lock is NO KEY UPDATE,
 * as there. With neither rule on, nothing is locked: uploads do not wait on
 * each other for nothing.
 */
CREATE FUNCTION app.lock_storage_totals(user_id bigint) RETURNS void
    LANGUAGE plpgsql
    VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bound bigint;
    quota bigint;
BEGIN
    SELECT s.storage_max_bytes, s.user_quota_bytes INTO bound, quota FROM app.settings AS s;
    IF coalesce(bound, 0) > 0 OR coalesce(quota, 0) > 0 THEN
        PERFORM FROM app.storage FOR UPDATE;
    END IF;
    IF coalesce(quota, 0) > 0 THEN
        PERFORM FROM app.users AS u WHERE u.id = lock_storage_totals.user_id FOR NO KEY UPDATE;
    END IF;
END;
$$;

REVOKE ALL ON FUNCTION app.lock_storage_totals(bigint) FROM PUBLIC;

COMMENT ON FUNCTION app.lock_storage_totals(bigint) IS
    'Locks the service''s totals (when a bound or a quota is set), then the user''s row (when a quota is), until the transaction ends.';
