/**
 * A PATCH (which claimed `generation`) is still at work on the upload, bytes
 * arriving: its word (`patch_busy_until`, which HEAD waits on) holds for
 * another app.patch_busy_lease(). Checkpoints renew it too, but they come only
 * as the MP3 grows: every 8 s at 32 kb/s when the client sends in real time.
 * Nothing changes once the PATCH has settled, another request has claimed the
 * upload, or the word has lapsed (a PATCH nobody heard from that long, as when
 * a renewal waited out a frozen database, is not taken to be at work again).
 */
CREATE FUNCTION api.upload_busy(upload_id uuid, generation bigint)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE app.uploads AS u
    SET patch_busy_until = now() + app.patch_busy_lease()
    WHERE u.id = upload_busy.upload_id
        AND u.generation = upload_busy.generation
        AND u.patch_busy_until > now()  -- NULL once settled: whatever comes late changes nothing
        AND u.record_id IS NULL;
END;
$$;

COMMENT ON FUNCTION api.upload_busy(uuid, bigint) IS
    'A PATCH is still at work on an upload: HEAD waits for it another 6 s.';
