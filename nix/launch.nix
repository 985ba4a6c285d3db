# nixery-launch: the image's entry point. Runs ./nixery-launch.sh (users,
# nix.conf, /tmp, certificates, the pre-launch hook; see its header) with the
# server and the tools it uses first on PATH, then the script execs `nixery`.
{ pkgs, nixery }:

pkgs.writeShellScriptBin "nixery-launch" ''
  export PATH=${pkgs.lib.makeBinPath [ nixery pkgs.coreutils pkgs.bash ]}''${PATH:+:$PATH}
  export NIXERY_CA_BUNDLE=''${NIXERY_CA_BUNDLE:-${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt}
  exec ${pkgs.bash}/bin/bash ${./nixery-launch.sh} "$@"
''
