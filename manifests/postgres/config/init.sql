-- Schema, seed rows and the SPIFFE ID check for the demo database.
-- Run once, by the database superuser, connected to database "demo", when the data directory is
-- created: by init-db.sh (PostgreSQL's init container on kind, `cargo xtask up --local` on the
-- local runtime), and by the backend's integration tests. The backend never changes the schema.

CREATE EXTENSION IF NOT EXISTS sslinfo;

-- No password: pg_hba.conf lets "backend" in only with a client certificate whose CN is "backend".
CREATE ROLE backend LOGIN;

CREATE TABLE orders (
    id          integer PRIMARY KEY,
    description text    NOT NULL,
    status      text    NOT NULL
);

INSERT INTO orders (id, description, status) VALUES
    (1001, 'Hardware security module', 'shipped'),
    (1002, 'Rotating key ring',        'processing'),
    (1003, 'Trust bundle, three-pack', 'pending');

-- The SPIFFE ID of this connection's client certificate: the URI in its subjectAltName, or NULL.
CREATE FUNCTION client_spiffe_id() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT substring(value FROM 'URI:(spiffe://[^,[:space:]]+)')
    FROM ssl_extension_info()
    WHERE name = 'subjectAltName'
$$;

-- Certificate authentication checks only the chain and the CN, so a certificate with CN "backend"
-- and any other SPIFFE ID would get in. This check refuses every SPIFFE ID but the one allowed,
-- and names the one it saw.
CREATE FUNCTION require_client_spiffe_id(allowed text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    seen text := client_spiffe_id();
BEGIN
    IF seen IS DISTINCT FROM allowed THEN
        RAISE EXCEPTION 'SPIFFE ID % may not read orders; only % may',
            coalesce(seen, '(none: no client certificate with a SPIFFE ID)'), allowed
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN true;
END
$$;

ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY orders_only_for_the_backend_svid ON orders FOR SELECT TO backend
    USING (require_client_spiffe_id('spiffe://example.org/ns/demo/sa/backend'));
GRANT SELECT ON orders TO backend;
