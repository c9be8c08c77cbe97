-- Usernames unique as people read them: 'ＺＯＥ' (full-width) and 'Zoe' are one
-- name. The key is the NFKC form, case-folded (upper then lower with ICU's
-- full case mapping, so 'Straße' and 'STRASSE' meet too). api.user_create
-- stores names in NFKC and refuses invisible and bidirectional-control
-- characters; the constraints below hold an admin's hand-made rows to the same
-- rule (NOT VALID: rows from before are not checked, new and changed ones are).

CREATE FUNCTION app.username_key(name text) RETURNS text
    LANGUAGE sql
    IMMUTABLE
    STRICT
    PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    RETURN lower(upper(normalize(name, NFKC) COLLATE "und-x-icu"));

COMMENT ON FUNCTION app.username_key(text) IS
    'What makes two usernames the same: NFKC, then case-folded.';

DROP INDEX app.users_username_lower_key;

CREATE UNIQUE INDEX users_username_key ON app.users (app.username_key(username));

ALTER TABLE app.users
    ADD CONSTRAINT username_is_nfkc CHECK (username IS NFKC NORMALIZED) NOT VALID,
    -- Unicode's default-ignorable code points (zero-width spaces and joiners,
    -- bidirectional controls, fillers, variation selectors, tags): characters
    -- that show as nothing, or reorder what is around them.
    ADD CONSTRAINT username_has_no_invisible_characters CHECK (
        username !~ '[\u00AD\u034F\u061C\u115F\u1160\u17B4\u17B5\u180B-\u180F\u200B-\u200F\u202A-\u202E\u2060-\u206F\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A\U000E0000-\U000E0FFF]'
    ) NOT VALID;
