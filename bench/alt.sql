-- The alternative: the same one-transaction protocol written in PL/pgSQL the way a competent
-- team would without this extension. It is what case 4 of bench/run.sh measures.
--
-- Where its fingerprint is wrong (the harness shows each on the running server):
-- - sha256(jsonb::text) hashes PostgreSQL's display form, not a canonical one: numbers keep
--   their written scale, so {"amount": 1.0} and {"amount": 1} are two different commands;
-- - object keys are ordered by length first, then bytewise (jsonb's storage order), not by
--   RFC 8785's UTF-16 order, so the hash cannot be recomputed by a client in another
--   language with a JSON canonicalisation library;
-- - the display form is PostgreSQL's to change between major versions; nothing freezes it.
-- It has no leases, no attempt fencing, no ownership check and no wait: the things a
-- hand-written version tends to leave out.
\set ON_ERROR_STOP 1
CREATE TABLE bench.alt_keys (
    scope       text NOT NULL,
    key         text NOT NULL,
    fingerprint bytea NOT NULL,
    state       text NOT NULL DEFAULT 'in_progress',
    http_status integer,
    response    jsonb,
    resource    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE FUNCTION bench.alt_begin(p_scope text, p_key text, p_command jsonb,
                                p_ttl interval DEFAULT '24 hours',
                                OUT outcome text, OUT http_status integer,
                                OUT response jsonb, OUT resource text)
LANGUAGE plpgsql AS $$
DECLARE
    fp bytea := sha256(p_command::text::bytea);
    r  bench.alt_keys;
BEGIN
    INSERT INTO bench.alt_keys (scope, key, fingerprint, expires_at)
    VALUES (p_scope, p_key, fp, now() + p_ttl)
    ON CONFLICT (scope, key) DO NOTHING;
    IF FOUND THEN
        outcome := 'execute';
        RETURN;
    END IF;
    SELECT * INTO r FROM bench.alt_keys k WHERE k.scope = p_scope AND k.key = p_key FOR UPDATE;
    IF r.expires_at <= now() THEN
        UPDATE bench.alt_keys k SET fingerprint = fp, state = 'in_progress', http_status = NULL,
               response = NULL, resource = NULL, created_at = now(), expires_at = now() + p_ttl
         WHERE k.scope = p_scope AND k.key = p_key;
        outcome := 'execute';
        RETURN;
    END IF;
    IF r.fingerprint <> fp THEN
        RAISE EXCEPTION 'idempotency key "%" reused with another command', p_key
            USING ERRCODE = 'P0001';
    END IF;
    IF r.state = 'completed' THEN
        outcome := 'replay';
        http_status := r.http_status;
        response := r.response;
        resource := r.resource;
        RETURN;
    END IF;
    outcome := 'in_progress';
    http_status := 409;
END
$$;

CREATE FUNCTION bench.alt_complete(p_scope text, p_key text, p_response jsonb DEFAULT NULL,
                                   p_resource text DEFAULT NULL, p_http_status integer DEFAULT 200)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bench.alt_keys k
       SET state = 'completed', http_status = p_http_status, response = p_response,
           resource = p_resource
     WHERE k.scope = p_scope AND k.key = p_key AND k.state = 'in_progress';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'idempotency key "%" is not in progress', p_key USING ERRCODE = 'P0002';
    END IF;
END
$$;
