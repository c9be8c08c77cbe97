/**
 * A checkpoint of a PATCH (which claimed `generation`): writes `chunk` into the
 * upload's MP3 at byte `at`, which then ends after it, and stores the
 * converter's `progress`, its `analysis` (the measurement so far) and the
 * WAV's bytes sent after its resume point (`wav_pending`, the last
 * `upload_offset` bytes; at most 16 MiB) at the new `upload_offset`, which may
 * not go back, in place of the pieces kept as sent (api.upload_append); the
 * WAV's header once. PT423 when another request has claimed the upload since;
 * PT413 past the user's quota (this and the user's other uploads in progress
 * count), PT507 past the service's bound (every upload in progress counts, with
 * the WAV bytes it keeps), checked after any other upload's checkpoint under way
 * has ended (app.lock_storage_totals), but for the upload's last bytes, which
 * api.record_finish checks so when they become a record. Extends the expiry.
 */
CREATE FUNCTION api.upload_checkpoint(
    upload_id uuid,
    generation bigint,
    at bigint,
    chunk bytea,
    upload_offset bigint,
    progress jsonb,
    wav_header bytea,
    lifetime_s double precision,
    analysis bytea DEFAULT NULL,
    wav_pending bytea DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    the_upload app.uploads := app.upload_writer(upload_id, generation);
    new_size bigint := at + coalesce(octet_length(chunk), 0);
    descriptor integer;
BEGIN
    IF at IS NULL OR at < 0 OR upload_offset IS NULL OR upload_offset < the_upload.upload_offset THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'A checkpoint writes from 0 on and never goes back.';
    END IF;
    IF octet_length(wav_pending) > least(upload_offset, 16777216) THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'The pending bytes are the last of the offset''s, at most 16 MiB of them.';
    END IF;
    -- The upload's last bytes are checked again, locked, by the api.record_finish that
    -- follows in the same transaction (the service's way): locked from here, the totals
    -- and the user's row would be held through the whole finish (a digest, a read-back),
    -- and taken before the totals, the user's row would deadlock with record_finish.
    IF upload_offset IS DISTINCT FROM the_upload.upload_length THEN
        PERFORM app.lock_storage_totals(the_upload.user_id);
    END IF;
    PERFORM app.assert_within_quota(the_upload.user_id, new_size, the_upload.id);
    PERFORM app.assert_within_storage_bound(
        new_size + app.upload_kept_bytes(coalesce(the_upload.wav_header, upload_checkpoint.wav_header),
                                         upload_checkpoint.wav_pending, upload_checkpoint.analysis),
        the_upload.id
    );
    descriptor := lo_open(the_upload.lo_oid, x'20000'::integer);  -- INV_WRITE
    PERFORM lo_lseek64(descriptor, at, 0);  -- SEEK_SET
    PERFORM lowrite(descriptor, coalesce(chunk, ''::bytea));
    PERFORM lo_truncate64(descriptor, new_size);
    PERFORM lo_close(descriptor);
    -- The conversion that checkpoints began with the pieces kept as sent: its own pending replaces them.
    DELETE FROM app.upload_pieces AS q WHERE q.upload_id = the_upload.id;
    UPDATE app.uploads AS u
    SET upload_offset = upload_checkpoint.upload_offset,
        progress = upload_checkpoint.progress,
        analysis = upload_checkpoint.analysis,
        wav_pending = upload_checkpoint.wav_pending,
        wav_header = coalesce(u.wav_header, upload_checkpoint.wav_header),
        mp3_bytes = new_size,
        expires_at = app.upload_expiry(lifetime_s),
        patch_busy_until = now() + app.patch_busy_lease()
    WHERE u.id = the_upload.id;
END;
$$;

COMMENT ON FUNCTION api.upload_checkpoint(uuid, bigint, bigint, bytea, bigint, jsonb, bytea, double precision, bytea, bytea) IS
    'Writes a PATCH''s MP3 bytes at a byte offset and stores its checkpoint; PT423 once another took the upload.';
