# OCI images of the three services: only the binary and CA certificates, a fixed tag, no root.
# Load into kind with: $(nix build --print-out-paths .#frontend-image) | docker load
{ pkgs, frontend, backend, ledger }:
let
  image = name: pkg: pkgs.dockerTools.streamLayeredImage {
    name = "spire-lab/${name}";
    tag = "0.1.0";
    contents = [ pkgs.cacert ];
    config = {
      Entrypoint = [ "${pkg}/bin/${name}" ];
      User = "65532:65532";
      Env = [ "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt" ];
    };
  };
in
{
  frontend-image = image "frontend" frontend;
  backend-image = image "backend" backend;
  ledger-image = image "ledger" ledger;
}
