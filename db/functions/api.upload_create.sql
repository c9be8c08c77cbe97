/**
 * Creates a resumable upload for an authenticated user (tus creation): an empty
 * large object for its MP3, what the client asked for, and an expiry
 * `lifetime_s` from now (extended by every request that writes to it; PT400
 * unless it is from 1 second to 30 days). The WAV's length may come later
 * (NULL). Returns the upload's id and expiry.
 * PT413 at the user's quota or (PT507) the service's storage bound; PT429 when
 * the user already has `most_open` uploads in progress.
 */
CREATE FUNCTION api.upload_create(
    user_id bigint,
    token text,
    filename text,
    options jsonb,
    upload_length bigint,
    lifetime_s double precision,
    most_open integer
)
RETURNS TABLE (id uuid, expires_at timestamptz)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    open_uploads bigint;
BEGIN
    PERFORM FROM api.user_check(user_id, token);
    PERFORM FROM app.users AS u WHERE u.id = upload_create.user_id FOR NO KEY UPDATE;  -- one count at a time
    SELECT count(*) INTO open_uploads
    FROM app.uploads AS u
    WHERE u.user_id = upload_create.user_id AND u.record_id IS NULL AND u.expires_at > now();
    IF open_uploads >= most_open THEN
        RAISE EXCEPTION USING ERRCODE = 'PT429',
            MESSAGE = format('You have %s uploads in progress: finish or delete one first.', open_uploads);
    END IF;
    PERFORM app.assert_within_quota(upload_create.user_id, 1);
    PERFORM app.assert_within_storage_bound(1);
    RETURN QUERY
    INSERT INTO app.uploads AS u (user_id, lo_oid, filename, options, upload_length, expires_at)
    VALUES (
        upload_create.user_id,
        lo_create(0),
        coalesce(nullif(left(btrim(regexp_replace(regexp_replace(filename, '^.*[/\\]', ''), '[[:cntrl:]]', '', 'g')), 255), ''),
                 'recording.wav'),
        coalesce(options, '{}'::jsonb),
        upload_length,
        app.upload_expiry(lifetime_s)
    )
    RETURNING u.id, u.expires_at;
END;
$$;

COMMENT ON FUNCTION api.upload_create(bigint, text, text, jsonb, bigint, double precision, integer) IS
    'Creates a resumable upload; returns its id and expiry.';
