/**
 * Checks a user's credentials and returns the user. An unknown user, a wrong
 * token and a token that is not a UUID at all raise the same PT401, so the
 * answer never tells which user ids exist: the token's form is checked, and
 * the token read, before any user is looked up. Every api function that acts
 * for a user calls this first.
 */
CREATE FUNCTION api.user_check(user_id bigint, token text)
RETURNS TABLE (id bigint, username text)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    canonical text;
BEGIN
    -- Every string this pattern admits is a UUID to PostgreSQL (braces only in
    -- pairs), so the cast below cannot fail, for an existing user or not: a
    -- cast error only for existing ones would tell them apart.
    IF token ~ '^(\{[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}\}|[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12})$' THEN
        canonical := token::uuid::text;
        RETURN QUERY
        SELECT u.id, u.username
        FROM app.users AS u
        WHERE u.id = user_check.user_id
          AND u.token_sha256 = sha256(convert_to(canonical, 'UTF8'));
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;

    RAISE EXCEPTION USING ERRCODE = 'PT401', MESSAGE = 'Unknown user or wrong token.';
END;
$$;

COMMENT ON FUNCTION api.user_check(bigint, text) IS
    'Returns the user when the token is right; raises PT401 otherwise.';
