-- The SPIRE servers' datastore: the role they log in as, owning database "spire", in which
-- SPIRE creates and migrates its own schema. Run once by init-db.sh (PG_INIT_DATABASE=spire),
-- as the database superuser, connected to database "spire". The password comes from the
-- environment ($SPIRE_DB_PASSWORD: a Secret on kind, a 0600 file locally), never from here.

\getenv password SPIRE_DB_PASSWORD
\if :{?password}
\else
    \warn 'init-db: SPIRE_DB_PASSWORD is not set'
    SELECT 'SPIRE_DB_PASSWORD is not set'::integer;
\endif

CREATE ROLE spire LOGIN PASSWORD :'password';
ALTER DATABASE spire OWNER TO spire;
