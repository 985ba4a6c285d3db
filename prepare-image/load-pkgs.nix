# Load the package set that images are built from.
#
# Called by resolve-names.nix (and usable alone). Every argument arrives as a
# string from `--argstr`, so the structured ones are JSON:
#
#   srcType = "path"     srcArgs = {"path": "/abs/dir"}
#   srcType = "git"      srcArgs = {"url": "...", "rev": "<40 hex>", "ref": "refs/heads/main"}
#   srcType = "tarball"  srcArgs = {"url": "...", "sha256": "..."}   (sha256 optional)
#   importArgs = {"salt": "x", "slowSeconds": 3}   (passed on, plus `system`)
#
# A nixpkgs channel is not a type of its own: the server resolves a channel to
# a commit and asks for it as "git" or "tarball", so that the cache key names
# the exact revision.
{ srcType
, srcArgs
, system ? builtins.currentSystem
, importArgs ? "{}"
}:

let
  # Also accept attrsets, for callers that use --arg or import this file.
  decode = what: v:
    if builtins.isString v then builtins.fromJSON v
    else if builtins.isAttrs v then v
    else throw "load-pkgs: ${what} must be a JSON object string";

  args = decode "srcArgs" srcArgs;
  extraImportArgs = decode "importArgs" importArgs;

  need = key:
    if args ? ${key} && builtins.isString args.${key} && args.${key} != "" then args.${key}
    else throw "load-pkgs: srcType '${srcType}' needs a string '${key}' in srcArgs";

  # Only keys the fetcher knows; anything else would make fetchGit /
  # fetchTarball fail with "unsupported argument", and passing `null` for an
  # absent key is an error too, so absent keys are left out.
  pick = keys: builtins.intersectAttrs (builtins.listToAttrs
    (map (k: { name = k; value = null; }) keys)) args;

  source =
    if srcType == "path" then
      let p = need "path"; in
      if builtins.substring 0 1 p != "/"
      then throw "load-pkgs: srcArgs.path must be absolute, got '${p}'"
      else /. + p
    else if srcType == "git" then
      # Nix 2.8 quirks (see shared/research/fixture-pkgs.md, section 5):
      # - without `ref`, a repository that is not a local working tree is
      #   read at the literal ref `master` (not the remote HEAD), so the
      #   server always sends `ref`;
      # - a short ref means a branch (refs/heads/<ref>): tags must be given
      #   as "refs/tags/<tag>";
      # - with `rev`, the commit must be reachable from `ref` ("Cannot find
      #   Git revision ... in ref"), unless allRefs = true.
      # Giving both rev and ref makes the fetch exact and lets Nix reuse its
      # cache without asking the remote again.
      builtins.fetchGit ({ url = need "url"; } // pick [ "ref" "rev" "allRefs" "submodules" "name" ])
    else if srcType == "tarball" then
      # Without sha256 the result is cached by URL for `tarball-ttl` (1 h by
      # default): a replaced tarball under the same URL is not seen again
      # until then. Pinning sha256 avoids both the staleness and the download.
      builtins.fetchTarball ({ url = need "url"; } // pick [ "sha256" "name" ])
    else
      throw "load-pkgs: unknown srcType '${srcType}' (expected path, git or tarball)";
in
import source (extraImportArgs // { inherit system; })
