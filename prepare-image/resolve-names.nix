# Map requested package names to derivations, without building anything.
#
#   nix-instantiate --eval --strict --json prepare-image/resolve-names.nix \
#     --argstr srcType path --argstr srcArgs '{"path":"/abs/nix/demo-pkgs"}' \
#     --argstr packages '["htop","tools.greet","nosuch"]'
#
# answers
#
#   { "ok":     [ { "name": "htop", "attr": "htop", "drv": "/nix/store/...drv", "out": "/nix/store/..." },
#                 { "name": "tools.greet", ... } ],
#     "errors": [ { "name": "nosuch", "kind": "not_found" } ] }
#
# Both keys are always present; each list keeps the order of the request.
# Reading drvPath writes the .drv files to the store (instantiation), which is
# what the server then realises with its own timeouts.
#
# Lookup rules (Nixery's deepFetch, made total):
#   1. the name split on "." is a path through nested sets: "tools.greet";
#   2. if that fails, the first component is matched case-insensitively
#      against the top-level names, because registry names are lowercase
#      while package sets use camelCase ("haskellpackages.x" finds
#      haskellPackages.x). Nested components stay case-sensitive: nested
#      sets often hold names that differ only in case;
#   3. a name starting with a digit is also tried with a "_" prefix, the
#      nixpkgs convention for such attributes ("7zip" finds _7zip).
#
# Names only ever arrive as JSON data and are used as attribute *names*, never
# spliced into Nix source, so a name like `x"; builtins.abort "y` is just an
# attribute that does not exist. No name can make the evaluation fail:
# anything that is not a set on the way is "not_found"; a value that exists but
# is not a derivation (a function like lib.toLower, a string, a plain set like
# lib) is "not_a_derivation". Values that `throw` when forced (nixpkgs' removed
# aliases) count as not found; derivations whose drvPath throws (nixpkgs'
# broken/unfree checks) as not_a_derivation. `abort` cannot be caught in Nix;
# the package set must not abort on attribute access.
{ srcType
, srcArgs
, packages
, system ? builtins.currentSystem
, importArgs ? "{}"
}:

let
  inherit (builtins) attrNames filter hasAttr head isAttrs isString
    listToAttrs map substring tail tryEval;

  pkgs = import ./load-pkgs.nix { inherit srcType srcArgs system importArgs; };

  names =
    let v = if isString packages then builtins.fromJSON packages else packages; in
    if builtins.isList v && builtins.all isString v then v
    else throw "resolve-names: packages must be a JSON list of strings";

  # Own helpers rather than pkgs.lib: the package set need not provide a lib.
  toLower = builtins.replaceStrings
    (builtins.genList (i: substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26)
    (builtins.genList (i: substring i 1 "abcdefghijklmnopqrstuvwxyz") 26);
  splitDots = s: filter isString (builtins.split "\\." s);
  isDigit = c: builtins.elem c [ "0" "1" "2" "3" "4" "5" "6" "7" "8" "9" ];

  # Forcing a value may throw (removed aliases); treat that as "not a set".
  isSet = v: let r = tryEval (isAttrs v); in r.success && r.value;

  # Follow an attribute path; null when some step is missing.
  walk = path: v:
    if path == [ ] then { value = v; }
    else if isSet v && hasAttr (head path) v then walk (tail path) v.${head path}
    else null;

  # lowercased top-level name -> real name. Lazy: built only when a
  # case-insensitive retry happens. If two names differ only in case, the
  # first in attrNames order wins (an exact match never gets here).
  topLevelByLower = listToAttrs (map (n: { name = toLower n; value = n; })
    (attrNames pkgs));

  # The attribute paths tried for one name, in order of preference.
  candidates = name:
    let
      path = splitDots name;
      first = head path;
      rest = tail path;
      caseFixed = f:
        let lf = toLower f; in
        if hasAttr lf topLevelByLower && topLevelByLower.${lf} != f
        then [ ([ topLevelByLower.${lf} ] ++ rest) ] else [ ];
      digitFixed = if isDigit (substring 0 1 first) then [ "_${first}" ] else [ ];
    in
    [ path ] ++ caseFixed first
    ++ builtins.concatMap (f: [ ([ f ] ++ rest) ] ++ caseFixed f) digitFixed;

  # First candidate that exists: { attr = [...]; value = ...; } or null.
  lookup = name:
    builtins.foldl'
      (found: attr:
        if found != null then found
        else
          let w = walk attr pkgs; in
          if w == null then null
          # A value that throws when forced is as good as absent.
          else if !(tryEval w.value).success then null
          else { inherit attr; inherit (w) value; })
      null
      (candidates name);

  isDerivation = v:
    let r = tryEval (isAttrs v && (v.type or null) == "derivation"); in
    r.success && r.value;

  resolve = name:
    let
      found = lookup name;
      v = found.value;
      # `or null`: a missing attribute is an error tryEval cannot catch.
      drv = tryEval (v.drvPath or null);
      out = tryEval (v.outPath or null);
      usable = r: r.success && isString r.value;
    in
    if found == null then { inherit name; kind = "not_found"; }
    else if !(isDerivation v && usable drv && usable out)
    then { inherit name; kind = "not_a_derivation"; }
    # The key is `out`, not `outPath`: toJSON turns any set that has an
    # outPath into just that string.
    else {
      inherit name;
      attr = builtins.concatStringsSep "." found.attr;
      drv = drv.value;
      out = out.value;
    };

  results = map resolve names;
in
# Load the set even for an empty request, so that a bad source is an error
# (rc 1) rather than an empty, successful answer.
if !(isAttrs pkgs) then throw "resolve-names: the package source is not an attribute set"
else {
  ok = filter (r: !(r ? kind)) results;
  errors = filter (r: r ? kind) results;
}
