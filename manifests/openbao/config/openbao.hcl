# OpenBao for the lab: one node, integrated (raft) storage, TLS with its own X.509-SVID (spiffe-helper's
# files beside it, reloaded on the SIGHUP the helper sends), TLS 1.3 only. Initialized and
# unsealed by xtask at `up`; the unseal key and root token stay in the lab's state directory. An
# audit log of every request and answer (secrets HMAC'd) to a file.
# The local runtime changes only addresses and paths.
ui = false
api_addr = "https://openbao.demo.svc:8200"
# Raft's own listener (the API port + 1); a single node talks to nobody on it.
cluster_addr = "https://openbao-0.openbao.demo.svc:8201"
pid_file = "/openbao/run/openbao.pid"
log_level = "info"

storage "raft" {
  path = "/openbao/data"
  node_id = "openbao-0"
  # Raft's timeouts at 1x (the default, 5x, waits ~8 s for a single node to elect itself).
  performance_multiplier = 1
}

listener "tcp" {
  address = "0.0.0.0:8200"
  tls_cert_file = "/spiffe-certs/svid.pem"
  tls_key_file = "/spiffe-certs/svid_key.pem"
  tls_min_version = "tls13"
  # Clients prove who they are with a JWT-SVID at login, not with a client certificate.
  tls_disable_client_certs = true
}

# Declared here: OpenBao refuses audit devices made through its API.
audit "file" "file" {
  description = "every request and answer, secrets HMAC'd"
  options {
    file_path = "/openbao/audit/audit.log"
  }
}
