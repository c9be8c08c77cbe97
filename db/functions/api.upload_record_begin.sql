/**
 * The last PATCH of a resumable upload (which claimed `generation`), once its
 * last bytes are written: its MP3 becomes a record in progress, to finish in
 * this same transaction with api.record_finish (given the header frame) as an
 * upload by POST /record is. Returns the record's id; the upload then answers
 * with it (api.upload_open) until it expires. PT423 once another took it.
 */
CREATE FUNCTION api.upload_record_begin(upload_id uuid, generation bigint)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    the_upload app.uploads := app.upload_writer(upload_id, generation);
    new_id uuid;
BEGIN
    INSERT INTO app.records (user_id, lo_oid, original_filename)
    VALUES (the_upload.user_id, the_upload.lo_oid, the_upload.filename)
    RETURNING records.id INTO new_id;
    UPDATE app.uploads AS u
    SET lo_oid = NULL, record_id = new_id, upload_offset = u.upload_length, progress = NULL, mp3_bytes = 0
    WHERE u.id = the_upload.id;
    RETURN new_id;
END;
$$;

COMMENT ON FUNCTION api.upload_record_begin(uuid, bigint) IS
    'Makes a finished resumable upload''s MP3 a record in progress; returns its id.';
