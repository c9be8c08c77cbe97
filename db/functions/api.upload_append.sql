/**
 * A PATCH (which claimed `generation`) too short to be worth converting on its
 * own keeps its bytes as they were sent, at the upload's offset `at`: a row of
 * app.upload_pieces, and the offset moved past them. The next PATCH that
 * converts begins with them (api.upload_claim returns them after wav_pending),
 * and its first checkpoint replaces them. Only once the WAV's header is stored
 * (a PATCH that brings it converts it), never the upload's last byte (the PATCH
 * that brings it makes the record), at most app.upload_pieces_most() pieces
 * and 16 MiB pending in all: PT400 otherwise. PT409 when `at` is not the
 * offset, PT423 once another request claimed the upload, PT507 past the
 * storage bound.
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
    pieces integer;
    pieces_bytes bigint;
BEGIN
    IF at IS DISTINCT FROM the_upload.upload_offset THEN
        RAISE EXCEPTION USING ERRCODE = 'PT409',
            MESSAGE = format('The upload''s offset is %s, not %s.', the_upload.upload_offset, at);
    END IF;
    IF coalesce(octet_length(piece), 0) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'A piece has at least one byte.';
    END IF;
    IF the_upload.wav_header IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'Bytes are kept as sent only after the WAV''s header is stored: convert the first.';
    END IF;
    IF at + octet_length(piece) >= the_upload.upload_length THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'The upload''s last byte is converted, not kept as sent: it makes the record.';
    END IF;
    SELECT count(*), coalesce(sum(octet_length(q.piece)), 0) INTO pieces, pieces_bytes
    FROM app.upload_pieces AS q
    WHERE q.upload_id = the_upload.id;
    IF pieces >= app.upload_pieces_most()
        OR coalesce(octet_length(the_upload.wav_pending), 0) + pieces_bytes + octet_length(piece) > 16777216 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = format('The upload keeps %s pieces as sent already (at most %s, and 16 MiB): convert them.',
                             pieces, app.upload_pieces_most());
    END IF;
    PERFORM app.assert_within_storage_bound(
        the_upload.mp3_bytes + app.upload_kept_bytes(the_upload.wav_header, the_upload.wav_pending, the_upload.analysis)
            + pieces_bytes + octet_length(piece),
        the_upload.id
    );
    INSERT INTO app.upload_pieces (upload_id, at, piece) VALUES (the_upload.id, at, piece);
    UPDATE app.uploads AS u
    SET upload_offset = at + octet_length(piece),
        expires_at = now() + make_interval(secs => lifetime_s),
        patch_busy_until = now() + app.patch_busy_lease()
    WHERE u.id = the_upload.id;
END;
$$;

COMMENT ON FUNCTION api.upload_append(uuid, bigint, bigint, bytea, double precision) IS
    'Keeps a short PATCH''s bytes as sent at the upload''s offset, to be converted by a later PATCH.';
