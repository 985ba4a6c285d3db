# nixery-image: a container image with the server, Nix and what Nix needs
# at run time (git and openssh for git package sets, CA certificates,
# /etc/services and /etc/protocols), started by nixery-launch.
#
#   nix-build -A nixery-image && docker load < result
#
# buildLayeredImageWithNixDb is buildLayeredImage plus a Nix database that
# registers the image's own store paths as valid. Without it the Nix inside
# the container would take them for garbage: a build needing, say, the glibc
# the server itself runs on would delete that path and fetch it again.
#
# The tag is nixpkgs' default, the image's output hash, so every change gets
# a new tag and a Kubernetes rollout (deploy/README.md).
{ pkgs, nixery, nixery-prepare-image, nixery-launch }:

let
  port = "8080";
  caBundle = "${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt";
in
pkgs.dockerTools.buildLayeredImageWithNixDb {
  name = "nixery-ts";

  contents = [
    nixery-launch
    nixery
    nixery-prepare-image
    pkgs.nix
    pkgs.git
    pkgs.openssh
    pkgs.bashInteractive
    pkgs.coreutils
    pkgs.cacert
    pkgs.iana-etc
  ];

  # nixery-launch creates these too (and the rest of what Nix needs); having
  # them in the image also serves `docker run --entrypoint bash`.
  extraCommands = ''
    mkdir -p -m 1777 tmp var/tmp
    mkdir -p root usr/bin var/empty
    ln -s ${pkgs.coreutils}/bin/env usr/bin/env
  '';

  config = {
    Entrypoint = [ "${nixery-launch}/bin/nixery-launch" ];
    Env = [
      "PATH=/bin:/usr/bin"
      "NIX_SSL_CERT_FILE=${caBundle}"
      "SSL_CERT_FILE=${caBundle}"
      "PORT=${port}"
    ];
    ExposedPorts = { "${port}/tcp" = { }; };
    Labels = {
      "org.opencontainers.image.title" = "nixery-ts";
      "org.opencontainers.image.description" = "Container registry that builds images on demand from Nix";
    };
  };
}
