/**
 * A PATCH takes a resumable upload over (tus): it must send the WAV from the
 * upload's offset (PT409 otherwise, nothing changed). Returns the generation its
 * checkpoints must carry (any older request's no longer match: it writes
 * nothing more), the length (set now when it was deferred and the PATCH gives
 * it; PT400 to change one already set or to set one below the offset), and
 * what the converter needs to go on: the options, the WAV's header and the last
 * checkpoint, its pending bytes followed by the pieces kept as sent since
 * (api.upload_append). Given the PATCH's length (`sending`, its Content-Length),
 * it says whether the PATCH keeps its bytes as sent rather than converting
 * (app.upload_keeps_as_sent); such a PATCH is given neither the pending bytes
 * nor the measurement: it needs neither. Extends the expiry, and marks the
 * upload as being patched (see api.upload_open). A finished upload is PT409 to
 * any PATCH but one at its end.
 */
CREATE FUNCTION api.upload_claim(
    user_id bigint,
    token text,
    upload_id uuid,
    upload_offset bigint,
    given_length bigint,
    lifetime_s double precision,
    sending bigint DEFAULT NULL
)
RETURNS TABLE (
    generation bigint,
    upload_length bigint,
    filename text,
    options jsonb,
    wav_header bytea,
    progress jsonb,
    analysis bytea,
    wav_pending bytea,
    keeps_as_sent boolean,
    record_id uuid
)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    the_upload app.uploads := app.upload_of(user_id, token, upload_id);
    keeps boolean;
    pieces bytea;
BEGIN
    SELECT * INTO the_upload FROM app.uploads AS u WHERE u.id = the_upload.id FOR UPDATE;
    IF the_upload.upload_offset <> upload_claim.upload_offset THEN
        RAISE EXCEPTION USING ERRCODE = 'PT409',
            MESSAGE = format('The upload''s offset is %s, not %s: send from there.', the_upload.upload_offset,
                             upload_claim.upload_offset);
    END IF;
    IF given_length IS NOT NULL AND given_length < the_upload.upload_offset THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'The upload''s length is less than its offset.';
    END IF;
    IF given_length IS NOT NULL AND the_upload.upload_length IS NOT NULL AND given_length <> the_upload.upload_length THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'The upload''s length is set already.';
    END IF;
    IF the_upload.record_id IS NULL THEN
        UPDATE app.uploads AS u
        SET generation = u.generation + 1,
            upload_length = coalesce(u.upload_length, given_length),
            expires_at = app.upload_expiry(lifetime_s),
            patch_busy_until = now() + app.patch_busy_lease()
        WHERE u.id = the_upload.id
        RETURNING * INTO the_upload;
    END IF;
    keeps := app.upload_keeps_as_sent(the_upload, sending);
    IF NOT keeps THEN
        SELECT string_agg(q.piece, ''::bytea ORDER BY q.at) INTO pieces
        FROM app.upload_pieces AS q
        WHERE q.upload_id = the_upload.id;
    END IF;
    RETURN QUERY SELECT the_upload.generation, the_upload.upload_length, the_upload.filename, the_upload.options,
                        the_upload.wav_header, the_upload.progress, CASE WHEN NOT keeps THEN the_upload.analysis END,
                        CASE WHEN keeps THEN NULL
                             WHEN pieces IS NULL THEN the_upload.wav_pending
                             ELSE coalesce(the_upload.wav_pending, ''::bytea) || pieces END,
                        keeps, the_upload.record_id;
END;
$$;

COMMENT ON FUNCTION api.upload_claim(bigint, text, uuid, bigint, bigint, double precision, bigint) IS
    'A PATCH takes an upload over at its offset; returns its generation and what the converter goes on from.';
