{
  description = "SPIFFE/SPIRE zero-trust lab: workload identity with SPIRE, Envoy SDS and spiffe-helper";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    crane.url = "github:ipetkov/crane";
  };

  outputs = { self, nixpkgs, crane }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system:
        f (import nixpkgs { inherit system; }));
      pins = import ./nix/pins.nix;
      rust = pkgs: import ./nix/rust.nix { inherit pkgs crane pins; root = ./.; };
    in
    {
      packages = forAllSystems (pkgs:
        let r = rust pkgs; in {
          inherit (r) frontend backend ledger xtask;
          default = r.xtask;
        } // import ./nix/images.nix { inherit pkgs; inherit (r) frontend backend ledger; });

      devShells = forAllSystems (pkgs: {
        default = import ./nix/shell.nix { inherit pkgs pins; };
      });

      checks = forAllSystems (pkgs: (rust pkgs).checks);

      # The pinned third-party images, as data (the same file xtask reads).
      lib = { inherit pins; };
    };
}
