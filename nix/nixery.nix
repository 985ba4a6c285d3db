# nixery: the nixery-ts server, built from this repository with nixpkgs'
# buildNpmPackage (`npm ci`, `npm run build`, dev dependencies pruned) and
# installed as
#
#   $out/lib/nixery-ts/{dist,node_modules,package.json,web,prepare-image}
#   $out/bin/nixery    node dist/launch.cjs, with NIXERY_PREPARE_IMAGE_DIR set to
#                      nixery-prepare-image's expressions, WEB_DIR to the
#                      bundled start page (both only if unset) and nix and git
#                      first on PATH (the server runs nix-instantiate,
#                      nix-store, nix and git).
{ pkgs, nixery-prepare-image, npmDepsHash }:

let
  inherit (pkgs) lib nodejs;

  root = ../.;
  rootLength = builtins.stringLength (toString root);

  # What `npm ci && npm run build` and the running server read. Tests,
  # benchmarks, packaging and deploy files stay out, so that editing them
  # does not rebuild the server.
  sourceEntries = [
    "package.json"
    "package-lock.json"
    "tsconfig.json"
    "tsconfig.build.json"
    "src"
    "web"
    "prepare-image"
  ];
  src = builtins.path {
    name = "nixery-ts-source";
    path = root;
    filter = path: _type:
      let relative = builtins.substring (rootLength + 1) (builtins.stringLength (toString path)) (toString path);
      in builtins.elem (builtins.head (builtins.split "/" relative)) sourceEntries;
  };

  packageJson = builtins.fromJSON (builtins.readFile (root + "/package.json"));

  # The lock file as fetchNpmDeps needs it. Our npm setup writes lock files
  # without `resolved` URLs (omit-lockfile-registry-resolved), and
  # prefetch-npm-deps skips every package that has none, so the offline
  # `npm ci` would find nothing in its cache. This adds the registry URL npm
  # itself would use (<registry>/<name>/-/<basename>-<version>.tgz) to every
  # registry package lacking one; entries that have one, links and bundled
  # packages are kept as they are. The same file replaces package-lock.json
  # in the source (postPatch), so npmConfigHook's lock file check agrees.
  registry = "https://registry.npmjs.org";
  lock = builtins.fromJSON (builtins.readFile (root + "/package-lock.json"));
  lastOf = sep: s:
    let parts = builtins.filter builtins.isString (builtins.split sep s);
    in builtins.elemAt parts (builtins.length parts - 1);
  withResolved = key: p:
    if key == "" || p ? resolved || (p.link or false) || (p.inBundle or false)
      || !(p ? version) || builtins.match ".*:.*" p.version != null
    then p
    else
      let
        name = p.name or (lastOf "node_modules/" key);
        base = lastOf "/" name;
      in
      p // { resolved = "${registry}/${name}/-/${base}-${p.version}.tgz"; };
  npmLockfile = pkgs.writeText "package-lock.json"
    (builtins.toJSON (lock // { packages = builtins.mapAttrs withResolved lock.packages; }));
in
pkgs.buildNpmPackage {
  pname = packageJson.name;
  inherit (packageJson) version;
  inherit src nodejs npmDepsHash;

  postPatch = ''
    install -m 0644 ${npmLockfile} package-lock.json
  '';

  nativeBuildInputs = [ pkgs.makeWrapper ];

  # `npm run build` (tsc -p tsconfig.build.json) is buildNpmPackage's default
  # build step. The install is our own: package.json has no "files" list, so
  # `npm pack` (which the default install uses) would leave dist/ out, as
  # .gitignore does.
  installPhase = ''
    runHook preInstall

    npm prune --omit=dev --no-save
    find node_modules -maxdepth 1 -type d -empty -delete

    app=$out/lib/nixery-ts
    mkdir -p $app $out/bin
    cp -r dist node_modules package.json web prepare-image $app/

    makeWrapper ${nodejs}/bin/node $out/bin/nixery \
      --add-flags $app/dist/launch.cjs \
      --set-default NIXERY_PREPARE_IMAGE_DIR ${nixery-prepare-image}/share/nixery/prepare-image \
      --set-default WEB_DIR $app/web \
      --prefix PATH : ${lib.makeBinPath [ pkgs.nix pkgs.git ]}

    runHook postInstall
  '';

  passthru = {
    # prefetch-npm-deps "$(nix-build -A nixery.npmLockfile --no-out-link)"
    inherit npmLockfile nixery-prepare-image;
  };

  meta = {
    description = "Container registry that builds images on demand from Nix";
    mainProgram = "nixery";
  };
}
