# nixery-prepare-image: the Nix expressions the server evaluates at run time
# (../prepare-image: load-pkgs.nix, resolve-names.nix, list-packages.nix),
# installed into the store, plus a small wrapper that runs them the way the
# server does:
#
#   $out/share/nixery/prepare-image/*.nix   the server's NIXERY_PREPARE_IMAGE_DIR
#   $out/bin/nixery-prepare-image           resolve names by hand, e.g.
#
#     nixery-prepare-image --argstr srcType path \
#       --argstr srcArgs '{"path":"/srv/pkgs"}' --argstr packages '["htop","nosuch"]'
#
#   prints {"ok":[{"name":"htop","attr":"htop","drv":...,"out":...}],
#           "errors":[{"name":"nosuch","kind":"not_found"}]} (see resolve-names.nix).
{ pkgs }:

let
  # Only the .nix files, so that nothing else placed in the directory
  # changes this store path.
  expressions = builtins.path {
    name = "nixery-prepare-image-expressions";
    path = ../prepare-image;
    filter = path: type:
      type == "regular" && builtins.match ".*\\.nix" (baseNameOf path) != null;
  };
in
pkgs.runCommand "nixery-prepare-image" { } ''
  mkdir -p $out/bin $out/share/nixery
  cp -r ${expressions} $out/share/nixery/prepare-image
  cat > $out/bin/nixery-prepare-image <<EOF
  #!${pkgs.bash}/bin/bash
  # Resolve image package names against a package set (nothing is built).
  exec ${pkgs.nix}/bin/nix-instantiate --eval --strict --json "\$@" $out/share/nixery/prepare-image/resolve-names.nix
  EOF
  chmod +x $out/bin/nixery-prepare-image
''
