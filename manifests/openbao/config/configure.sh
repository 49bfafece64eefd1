#!/bin/sh
# Configures the lab's OpenBao once it is initialized and unsealed; run by xtask at `up` on both
# runtimes (locally beside the lab, on kind inside the openbao pod), and again changes nothing.
# The root token comes in BAO_TOKEN, the address in BAO_ADDR, and BAO_CACERT is the SPIFFE trust
# bundle: OpenBao's listener serves its own X.509-SVID (DNS SAN BAO_TLS_SERVER_NAME=openbao).
#
#   LAB_OIDC_ISSUER      the SPIRE OIDC discovery provider's issuer URL (= the servers' jwt_issuer)
#   LAB_OIDC_CA_FILE     the CA that signed the provider's serving certificate
#   LAB_PG_HOST/PORT     the lab's PostgreSQL, as OpenBao reaches it
#   LAB_CERTS            OpenBao's spiffe-helper files, as OpenBao reads them (its client certificate)
#   LAB_REPORTS_TTL, LAB_REPORTS_MAX_TTL   the reports role's lease times
#   LAB_API_TOKEN        the demo secret's value, made at `up` (only written the first time)
set -eu
: "${LAB_OIDC_ISSUER:?}" "${LAB_OIDC_CA_FILE:?}" "${LAB_PG_HOST:?}" "${LAB_PG_PORT:?}"
: "${LAB_CERTS:?}" "${LAB_REPORTS_TTL:?}" "${LAB_REPORTS_MAX_TTL:?}"
: "${LAB_API_TOKEN:?}"

# Whether `bao <what> list` shows a mount at <path>/.
mounted() { bao "$1" list -format=json | grep -q "\"$2/\""; }

# JWT-SVIDs, verified against the keys SPIRE publishes through its OIDC discovery provider.
mounted auth jwt || bao auth enable jwt
bao write auth/jwt/config \
    oidc_discovery_url="$LAB_OIDC_ISSUER" \
    oidc_discovery_ca_pem=@"$LAB_OIDC_CA_FILE" \
    bound_issuer="$LAB_OIDC_ISSUER"

# What the backend may do once logged in: its database credentials and its demo secrets.
bao policy write backend - <<'POLICY'
path "database/creds/reports" {
  capabilities = ["read"]
}
path "kv/data/demo/*" {
  capabilities = ["read"]
}
POLICY

# Only the backend's SPIFFE ID, only with a JWT-SVID minted for OpenBao.
bao write auth/jwt/role/backend \
    role_type=jwt \
    user_claim=sub \
    bound_subject=spiffe://example.org/ns/demo/sa/backend \
    bound_audiences=openbao \
    token_policies=backend \
    token_ttl=5m \
    token_max_ttl=30m

# Short-lived PostgreSQL users. OpenBao logs in as `openbao` with its own SVID (PostgreSQL checks
# its SPIFFE ID at login, see init.sql); each user it makes may only read the `reports` view,
# and must log in with the backend's SVID too. On expiry or revocation its sessions end and the
# role is dropped.
mounted secrets database || bao secrets enable database
bao write database/config/demo \
    plugin_name=postgresql-database-plugin \
    allowed_roles=reports \
    connection_url="host=$LAB_PG_HOST port=$LAB_PG_PORT dbname=demo user=openbao sslmode=verify-ca sslrootcert=$LAB_CERTS/svid_bundle.pem sslcert=$LAB_CERTS/svid.pem sslkey=$LAB_CERTS/svid_key.pem" \
    max_open_connections=2
bao write database/roles/reports \
    db_name=demo \
    default_ttl="$LAB_REPORTS_TTL" \
    max_ttl="$LAB_REPORTS_MAX_TTL" \
    creation_statements="CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE reports_reader;" \
    revocation_statements="SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'; DROP ROLE IF EXISTS \"{{name}}\";"

# One demo secret the backend reads and the UI shows masked.
mounted secrets kv || bao secrets enable -path=kv kv-v2
bao kv get -mount=kv demo/api-token >/dev/null 2>&1 ||
    bao kv put -mount=kv demo/api-token token="$LAB_API_TOKEN" >/dev/null
