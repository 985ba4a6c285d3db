# Nix packaging of nixery-ts (the pieces are in nix/):
#
#   nix-build -A nixery                 the server: result/bin/nixery
#   nix-build -A nixery-prepare-image   the Nix expressions it evaluates
#   nix-build -A nixery-image           the container image (docker load < result)
#
# Deploying the image: deploy/README.md.
{ pkgs ? import <nixpkgs> { }
  # PLACEHOLDER: hash of the npm dependency cache (fetchNpmDeps). Update it
  # after every change to package-lock.json, with nixpkgs' prefetch-npm-deps
  # run on the lock file the build uses (package-lock.json plus registry URLs):
  #   nix-shell -p prefetch-npm-deps --run \
  #     "prefetch-npm-deps $(nix-build -A nixery.npmLockfile --no-out-link)"
  # or build once with this value and copy the "got: sha256-..." of the error.
  # `nix-build --argstr npmDepsHash sha256-...` overrides it without an edit.
, npmDepsHash ? "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
}:

rec {
  nixery-prepare-image = import ./nix/prepare-image.nix { inherit pkgs; };
  nixery = import ./nix/nixery.nix { inherit pkgs nixery-prepare-image npmDepsHash; };
  nixery-launch = import ./nix/launch.nix { inherit pkgs nixery; };
  nixery-image = import ./nix/image.nix { inherit pkgs nixery nixery-prepare-image nixery-launch; };
}
