/**
 * The MP3 bytes a user's resumable uploads in progress hold, but `except_upload`'s
 * (the one a checkpoint is writing counts its new size itself). An upload whose
 * record has begun has handed its bytes to that record (its mp3_bytes are 0).
 * What the quota counts beside the records, and what api.user_storage tells the user.
 */
CREATE FUNCTION app.uploading_bytes(user_id bigint, except_upload uuid DEFAULT NULL) RETURNS bigint
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(sum(p.mp3_bytes), 0)::bigint
    FROM app.uploads AS p
    WHERE p.user_id = uploading_bytes.user_id
      AND p.record_id IS NULL
      AND p.id IS DISTINCT FROM except_upload;
$$;

REVOKE ALL ON FUNCTION app.uploading_bytes(bigint, uuid) FROM PUBLIC;

COMMENT ON FUNCTION app.uploading_bytes(bigint, uuid) IS
    'The MP3 bytes of the user''s unfinished uploads (but except_upload''s).';
