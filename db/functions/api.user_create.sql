/**
 * Creates a user and returns its token. This is the only time the token is
 * ever shown: the table keeps its SHA-256 alone.
 *
 * The name is normalised to NFKC (full-width letters become plain ones, a
 * no-break space a space) and trimmed; it must then be 1-64 characters with
 * no control characters and no invisible or bidirectional-control ones
 * (zero-width spaces, right-to-left overrides...): PT400. Names are unique as
 * people read them, NFKC and case-folded (PT409). Callable by the service role.
 */
CREATE FUNCTION api.user_create(name text)
RETURNS TABLE (id bigint, username text, token uuid)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    clean_name text := regexp_replace(normalize(name, NFKC), '^\s+|\s+$', '', 'g');
    new_token uuid := gen_random_uuid();
    new_id bigint;
BEGIN
    IF clean_name IS NULL OR clean_name = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'A username is required.';
    END IF;
    IF char_length(clean_name) > 64 THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400', MESSAGE = 'A username has at most 64 characters.';
    END IF;
    IF clean_name ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'A username may not contain control characters.';
    END IF;
    -- The same set as the constraint username_has_no_invisible_characters.
    IF clean_name ~ '[\u00AD\u034F\u061C\u115F\u1160\u17B4\u17B5\u180B-\u180F\u200B-\u200F\u202A-\u202E\u2060-\u206F\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A\U000E0000-\U000E0FFF]' THEN
        RAISE EXCEPTION USING ERRCODE = 'PT400',
            MESSAGE = 'A username may not contain invisible or text-direction characters.';
    END IF;

    -- ON CONFLICT rather than catching unique_violation: an exception block
    -- would open a subtransaction for every call.
    INSERT INTO app.users (username, token_sha256)
    VALUES (clean_name, sha256(convert_to(new_token::text, 'UTF8')))
    ON CONFLICT DO NOTHING
    RETURNING users.id INTO new_id;

    IF new_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'PT409',
            MESSAGE = format('The username %s is already taken.', clean_name);
    END IF;

    RETURN QUERY SELECT new_id, clean_name, new_token;
END;
$$;

COMMENT ON FUNCTION api.user_create(text) IS
    'Creates a user; returns id, username and the token (shown this once only).';
