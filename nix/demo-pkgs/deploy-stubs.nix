# The demo package set plus recording stand-ins for the parts of nixpkgs
# that the project's own packaging (../../default.nix, ../*.nix) uses and
# the demo set lacks, so that packaging is evaluated, and partly built,
# without nixpkgs:
#
#   nix-instantiate --eval --strict --json -E '
#     let pkgs = import ./nix/demo-pkgs/deploy-stubs.nix { };
#     in (import ./default.nix { inherit pkgs; }).nixery-image.stubArgs.config'
#
# The demo set itself is unchanged (this file imports it and adds to it), and
# what it already has is used as is: bash, bashInteractive, coreutils, git,
# cacert, iana-etc, runCommand, writeText, lib.
#
# Every stand-in is a derivation, so "${x}" and package lists behave as with
# nixpkgs, carrying two extra attributes:
#   stubKind   the nixpkgs function or package it stands for;
#   stubArgs   the arguments it was called with.
# Stand-ins for what cannot exist here (a node build, an image, openssh,
# nodejs, makeWrapper) fail with a message when built. Two build for real:
# writeShellScriptBin (a bash script in bin/) and nix (links to the host's
# Nix commands), so nixery-prepare-image builds and runs against this set.
args@{ system ? builtins.currentSystem
, hostPath ? "/usr/bin:/bin:/usr/sbin:/sbin"
, ...
}:

let
  demo = import ./default.nix args;
  inherit (demo) runCommand bash;

  record = kind: stubArgs: drv: drv // { stubKind = kind; inherit stubArgs; };

  unbuildable = kind: name: stubArgs: record kind stubArgs (derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [
      "-c"
      "echo 'deploy-stubs: ${name} is a stand-in for nixpkgs ${kind}: it records its arguments and cannot be built' >&2; exit 1"
    ];
  });

  writeShellScriptBin = name: text: record "writeShellScriptBin" { inherit name text; }
    (runCommand name { inherit text; passAsFile = [ "text" ]; } ''
      mkdir -p $out/bin
      { echo "#!${bash}/bin/bash"; cat "$textPath"; } > $out/bin/${name}
      chmod +x $out/bin/${name}
    '');

  # mkDerivation puts passthru on the result; so does this.
  buildNpmPackage = a:
    unbuildable "buildNpmPackage" (a.name or "${a.pname}-${a.version}") a // (a.passthru or { });

  buildLayeredImage = a:
    unbuildable "dockerTools.buildLayeredImage" "${baseNameOf a.name}.tar.gz" a
    // { imageName = a.name; imageTag = a.tag or "stub"; };

  # The host's Nix commands (Debian's nix-bin) as a package with bin/.
  nix = record "nix" { } (runCommand "nix-host" { } ''
    mkdir -p $out/bin
    for p in nix nix-build nix-instantiate nix-store nix-env nix-shell nix-hash nix-collect-garbage; do
      target=$(command -v $p) || { echo "deploy-stubs: $p is not on $PATH" >&2; exit 1; }
      ln -s "$target" $out/bin/$p
    done
  '');
in
demo // {
  inherit writeShellScriptBin buildNpmPackage nix;

  dockerTools = {
    inherit buildLayeredImage;
    buildLayeredImageWithNixDb = a:
      buildLayeredImage a // { stubKind = "dockerTools.buildLayeredImageWithNixDb"; };
  };

  makeWrapper = unbuildable "makeWrapper" "make-shell-wrapper-hook" { };
  nodejs = unbuildable "nodejs" "nodejs-22" { };
  openssh = unbuildable "openssh" "openssh-9" { };

  lib = demo.lib // {
    makeBinPath = packages: builtins.concatStringsSep ":" (map (p: "${p}/bin") packages);
  };
}
