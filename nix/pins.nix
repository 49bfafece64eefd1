# The pins as Nix data: the same nix/pins.json that xtask reads with serde.
builtins.fromJSON (builtins.readFile ./pins.json)
