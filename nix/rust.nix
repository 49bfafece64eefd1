# The Rust workspace with crane: dependencies built once, one package per crate, and the checks.
{ pkgs, crane, pins, root }:
let
  postgresql = pkgs."postgresql_${toString pins.postgres.major}";
  craneLib = crane.mkLib pkgs;
  lib = pkgs.lib;

  # Cargo sources plus the files the tests read: the shared configs, the pins and the README.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources root)
      (root + "/manifests")
      (root + "/nix/pins.json")
      (root + "/README.md")
    ];
  };

  commonArgs = {
    inherit src;
    strictDeps = true;
    nativeBuildInputs = [ pkgs.pkg-config ];
    buildInputs = [ pkgs.openssl ];
  };

  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

  crate = name: craneLib.buildPackage (commonArgs // {
    inherit cargoArtifacts;
    pname = name;
    cargoExtraArgs = "-p ${name}";
    doCheck = false;
  });
in
{
  frontend = crate "frontend";
  backend = crate "backend";
  ledger = crate "ledger";
  xtask = crate "xtask";

  checks = {
    clippy = craneLib.cargoClippy (commonArgs // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--workspace --all-targets -- --deny warnings";
    });

    fmt = craneLib.cargoFmt { inherit src; };

    # The tests that need nothing but PostgreSQL (from nixpkgs). Those that need the pinned
    # SPIRE, Envoy, kustomize or Kubernetes OpenAPI (the validations), and the browser test, run
    # in `cargo xtask ci`: nixpkgs carries other versions than the pinned ones.
    tests = craneLib.cargoNextest (commonArgs // {
      inherit cargoArtifacts;
      nativeCheckInputs = [ postgresql ];
      LAB_PG_BIN = "${postgresql}/bin";
      cargoNextestExtraArgs = "--workspace -E 'not (binary(browser) | test(/validat/) | test(/^kube::/))'";
    });
  };
}
