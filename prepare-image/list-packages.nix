# List every package a user can name in an image, for the package index
# (the search box of the start page). Nothing is built or instantiated.
#
#   nix-instantiate --eval --strict --json prepare-image/list-packages.nix \
#     --argstr srcType path --argstr srcArgs '{"path":"/abs/nix/demo-pkgs"}'
#
# answers a list, in attrNames order, depth first:
#
#   [ { "attr": "_7zip", "version": "16.02", "description": "Stand-in for 7-Zip: ..." },
#     { "attr": "glibc", "version": "2.36" },
#     { "attr": "motd" },
#     { "attr": "tools.greet", "version": "1.0", "description": "Greets its first argument" }, ... ]
#
# `attr` is the real attribute path (camelCase, `_` prefixed as in the set).
# `version` is the package's `version` attribute when it is a non-empty
# string, else the version part of its `name` (builtins.parseDrvName);
# `description` is meta.description when it is a non-empty string. Either is
# left out when unknown. Arguments are those of resolve-names.nix without
# `packages` (srcType, srcArgs, system, importArgs; see load-pkgs.nix).
#
# What is listed: the derivations (`type == "derivation"`) among the
# attributes of the set, and of nested sets marked
# `recurseForDerivations = true` (nixpkgs' recurseIntoAttrs), at any depth;
# other sets (lib, haskellPackages in nixpkgs) are not entered.
#
# Only names an image can request are listed: an attribute is kept when the
# image-name spelling of its path (src/image/name.ts: lowercase, a `_`
# before a leading digit dropped, so `caseFixture._7zip` is
# "casefixture.7zip") is a valid name component and resolve-names.nix would
# look that spelling up to exactly this attribute at every level. So:
#   - names with characters outside the registry grammar, or that cannot be
#     written in it (`dvd+rw-tools`, `__splicedPackages`, `foo'`, `a___b`),
#     are left out (a dot inside a quoted name, too: it would split);
#   - of names that differ only in case (Foo and FOO), only one that is
#     exactly lowercase is reachable; with none, the spelling is ambiguous
#     and all of them are left out (caseFixture.Greet and caseFixture.GREET
#     in the demo set);
#   - a set is entered only when its own name is reachable.
#
# Cheap by design: per value only `type`, `name`, `version`,
# `meta.description` and (for sets) `recurseForDerivations` are read; never
# `drvPath` or `outPath`, which would instantiate every derivation. So a
# derivation whose drvPath throws (nixpkgs' broken, unfree or unsupported
# packages, which resolve-names calls not_a_derivation) is still listed.
# Each value, its type check and each field are evaluated under tryEval: a
# value that throws (nixpkgs' removed aliases, packages whose platforms
# exclude `system`) is left out, a field that throws is absent. `abort`
# cannot be caught; the package set must not abort on attribute access.
{ srcType
, srcArgs
, system ? builtins.currentSystem
, importArgs ? "{}"
}:

let
  inherit (builtins) attrNames concatMap concatStringsSep filter genList
    hasAttr isAttrs isString substring stringLength tryEval;

  pkgs = import ./load-pkgs.nix { inherit srcType srcArgs system importArgs; };

  # The same helpers as resolve-names.nix (the set need not provide a lib).
  toLower = builtins.replaceStrings
    (genList (i: substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26)
    (genList (i: substring i 1 "abcdefghijklmnopqrstuvwxyz") 26);
  isDigit = c: builtins.elem c [ "0" "1" "2" "3" "4" "5" "6" "7" "8" "9" ];
  forces = v: (tryEval v).success;

  # One path component of an image name (src/image/name.ts: a name component
  # is this, joined with "."; the dots split attribute paths).
  component = "[a-z0-9]+((_|__|-+)[a-z0-9]+)*";
  spellable = r: builtins.match component r != null;

  # The spelling an image uses for attribute `a` (resolve-names rule 2c backwards).
  spelling = a:
    let l = toLower a; in
    if substring 0 1 a == "_" && isDigit (substring 1 1 a)
    then substring 1 (stringLength l) l else l;

  # What resolve-names.nix's `step` finds for component `c` in set `s`
  # (`index`: lowercase name -> real names, built once per set, lazily).
  lookup = s: index: c:
    let
      exact = n: if hasAttr n s && forces s.${n} then [ n ] else [ ];
      folded = n: filter (m: forces s.${m}) (index.${toLower n} or [ ]);
      tries = [ (exact c) (folded c) ]
        ++ (if isDigit (substring 0 1 c) then [ (exact "_${c}") (folded "_${c}") ] else [ ]);
    in
    builtins.foldl' (acc: t: if acc != [ ] then acc else t) [ ] tries;

  isDerivation = v:
    let r = tryEval (isAttrs v && (v.type or null) == "derivation"); in
    r.success && r.value;
  recurses = v:
    let r = tryEval (isAttrs v && (v.type or null) != "derivation" && (v.recurseForDerivations or false) == true); in
    r.success && r.value;

  # A field as a non-empty string, or null (absent, another type, or throws).
  str = f:
    let r = tryEval (let x = f null; in if isString x && x != "" then x else null); in
    if r.success then r.value else null;
  versionOf = v:
    let
      own = str (_: v.version or null);
      # `or null` and the isString check: a missing attribute or a type
      # error is not something tryEval can catch.
      parsed = str (_: let n = v.name or null; in if isString n then (builtins.parseDrvName n).version else null);
    in
    if own != null then own else parsed;

  entry = path: v:
    let
      version = versionOf v;
      description = str (_: v.meta.description or null);
    in
    { attr = concatStringsSep "." path; }
    // (if version == null then { } else { inherit version; })
    // (if description == null then { } else { inherit description; });

  # The entries under set `s`, reached at attribute path `path`.
  listSet = path: s:
    let
      index = builtins.groupBy toLower (attrNames s);
      reachable = a:
        let r = spelling a; in
        spellable r && lookup s index r == [ a ];
      visit = a:
        let v = s.${a}; in
        if !(forces v) || !(reachable a) then [ ]
        else if isDerivation v then [ (entry (path ++ [ a ]) v) ]
        else if recurses v then listSet (path ++ [ a ]) v
        else [ ];
    in
    concatMap visit (attrNames s);
in
if !(isAttrs pkgs) then throw "list-packages: the package source is not an attribute set"
else listSet [ ] pkgs
