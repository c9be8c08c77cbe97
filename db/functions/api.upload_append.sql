/**
 * A PATCH (which claimed `generation`) too short to be worth converting on its
 * own keeps its bytes as they were sent, at the upload's offset `at`: a row of
 * app.upload_pieces, and the offset moved past them. The next PATCH that
 * converts begins with them (api.upload_claim returns them after wav_pending),
 * and its first checkpoint replaces them. PT400 for bytes that may not be kept
 * so (app.upload_keeps_as_sent: before the WAV's header is stored, the upload's
 * last byte, past 64 pieces or 2 MiB unconverted), PT409 when `at` is not the
 * offset, PT423 once another request claimed the upload, PT413 when the
 * user's quota leaves no room for them to be converted into, PT507 past the
 * storage bound, checked after any other upload's bytes under way are stored
 * (app.lock_storage_totals).
 */
CREATE FUNCTION api.upload_append(
    upload_id uuid,
    generation bigint,
    at bigint,
    piece bytea,
    lifetime_s double precision
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    the_upload app.uploads := app.upload_writer(upload_id, generation);
BEGIN
    IF at IS DISTINCT FROM the_upload.upload_offset THEN
        RAISE EXCEPTION USING ERRCODE = 'PT409',
            MESSAGE = format('The upload''s offset is %s, not %s.', the_upload.upload_offset, at);
    END IF;
    IF coalesce(octet_length(piece), 0) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'A piece has at least one byte.';
    END IF;
    IF NOT app.upload_keeps_as_sent(the_upload, octet_length(piece)) THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'These bytes are converted, not kept as sent: the WAV''s header is not stored yet, they end'
                      ' the upload, or it keeps 64 pieces or 2 MiB unconverted already.';
    END IF;
    PERFORM app.lock_storage_totals(the_upload.user_id);
    -- The quota counts MP3s, and these bytes are WAV: refused only once the user's MP3s
    -- leave no byte for them to become (they would be refused when converted, after the
    -- client had sent up to 2 MiB more of them).
    PERFORM app.assert_within_quota(the_upload.user_id, the_upload.mp3_bytes + 1, the_upload.id);
    PERFORM app.assert_within_storage_bound(
        the_upload.mp3_bytes + app.upload_kept_bytes(the_upload.wav_header, the_upload.wav_pending, the_upload.analysis)
            + app.upload_bytes_in_pieces(the_upload.id) + octet_length(piece),
        the_upload.id
    );
    INSERT INTO app.upload_pieces (upload_id, at, piece) VALUES (the_upload.id, at, piece);
    UPDATE app.uploads AS u
    SET upload_offset = at + octet_length(piece),
        expires_at = app.upload_expiry(lifetime_s),
        patch_busy_until = now() + app.patch_busy_lease()
    WHERE u.id = the_upload.id;
END;
$$;

COMMENT ON FUNCTION api.upload_append(uuid, bigint, bigint, bytea, double precision) IS
    'Keeps a short PATCH''s bytes as sent at the upload''s offset, to be converted by a later PATCH.';
