# Map requested package names to derivations, without building anything.
#
#   nix-instantiate --eval --strict --json prepare-image/resolve-names.nix \
#     --argstr srcType path --argstr srcArgs '{"path":"/abs/nix/demo-pkgs"}' \
#     --argstr packages '["htop","tools.greet","nosuch"]'
#
# answers
#
#   { "ok":     [ { "name": "htop", "attr": "htop", "drv": "/nix/store/...drv", "out": "/nix/store/...",
#                   "meta": { "mainProgram": "htop", "license": "GPL-2.0-only",
#                             "homepage": "https://htop.dev/", "description": "..." } },
#                 { "name": "tools.greet", ... } ],
#     "errors": [ { "name": "nosuch", "kind": "not_found" } ] }
#
# Both keys are always present; each list keeps the order of the request.
#
# `meta` holds those four keys of the package's meta, each only when the
# package set gives it as a non-empty string, and is left out entirely when
# none is (glibc, a writeText result). Each field is evaluated on its own
# under tryEval: a throwing meta, a throwing field, or one of another type
# (a list of homepages, a set as description) is simply absent, and never
# makes a name fail to resolve. `license` is flattened the way nixpkgs'
# meta.license comes: a lib.licenses entry gives its spdxId, else its
# shortName, else its fullName; a string is itself; a list gives its entries
# so named, joined with " AND " (a list with an entry that has none of these,
# or an empty list, gives no license at all).
# Reading drvPath writes the .drv files to the store (instantiation), which is
# what the server then realises with its own timeouts.
#
# Lookup rules (Nixery's deepFetch, made total and case-insensitive):
#   1. the name split on "." is a path through nested sets: "tools.greet";
#   2. each component is looked up in the set reached so far, at its own
#      level, because registry names are lowercase while package sets use
#      camelCase at every depth ("haskellpackages.quickcheck" finds
#      haskellPackages.QuickCheck):
#        a. the attribute with exactly that name;
#        b. else the one attribute whose lowercase form equals the lowercased
#           component; if two or more do (Foo and FOO, no foo), the answer is
#             { "name": "ambig.foo", "kind": "ambiguous",
#               "candidates": [ "ambig.FOO", "ambig.Foo" ] }
#           with the full attribute paths in attrNames order;
#        c. else, for a component starting with a digit, a and b again with a
#           "_" prefix, the nixpkgs convention for such attributes ("7zip"
#           finds _7zip, "x.7zip" finds x._7zip);
#      the choice at one level is final (no backtracking into other spellings
#      when a deeper component is missing).
#   3. Cost stays flat: an exact hit never lists the set's names. A set's
#      lowercase index (attrNames + toLower) is built lazily, only when a
#      component misses there, and at most once per evaluation: lookup states
#      are shared by every requested name with the same prefix.
#
# Names only ever arrive as JSON data and are used as attribute *names*, never
# spliced into Nix source, so a name like `x"; builtins.abort "y` is just an
# attribute that does not exist. No name can make the evaluation fail:
# anything that is not a set on the way is "not_found"; a value that exists but
# is not a derivation (a function like lib.toLower, a string, a plain set like
# lib) is "not_a_derivation". Values that `throw` when forced (nixpkgs' removed
# aliases) count as absent at every step (so a throwing `foo` does not hide a
# working `Foo`, and is never a candidate); derivations whose drvPath throws
# (nixpkgs' broken/unfree checks) are not_a_derivation. `abort` cannot be
# caught in Nix; the package set must not abort on attribute access.
{ srcType
, srcArgs
, packages
, system ? builtins.currentSystem
, importArgs ? "{}"
}:

let
  inherit (builtins) attrNames concatMap concatStringsSep elemAt filter genList
    hasAttr isAttrs isString length listToAttrs map substring tryEval;

  pkgs = import ./load-pkgs.nix { inherit srcType srcArgs system importArgs; };

  names =
    let v = if isString packages then builtins.fromJSON packages else packages; in
    if builtins.isList v && builtins.all isString v then v
    else throw "resolve-names: packages must be a JSON list of strings";

  # Own helpers rather than pkgs.lib: the package set need not provide a lib.
  toLower = builtins.replaceStrings
    (genList (i: substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26)
    (genList (i: substring i 1 "abcdefghijklmnopqrstuvwxyz") 26);
  splitDots = s: filter isString (builtins.split "\\." s);
  isDigit = c: builtins.elem c [ "0" "1" "2" "3" "4" "5" "6" "7" "8" "9" ];
  dotted = concatStringsSep ".";

  # Forcing a value may throw (removed aliases); treat that as "absent".
  forces = v: (tryEval v).success;
  isSet = v: let r = tryEval (isAttrs v); in r.success && r.value;

  # A lookup state: where a (prefix of a) requested name leads.
  #   found:  { attr = [ real names ]; value; index; }
  #   failed: { kind = "not_found"; } or { kind = "ambiguous"; candidates; }
  # `index` (lowercase name -> real names) is a lazy attribute of the state:
  # evaluated only when a component misses in that set, then shared.
  found = attr: value: {
    inherit attr value;
    index = builtins.groupBy toLower (attrNames value);
  };
  root = found [ ] pkgs;

  # One component in the set of a found state (rules 2a-2c).
  step = state: c:
    let
      s = state.value;
      exact = n: if hasAttr n s && forces s.${n} then [ n ] else [ ];
      # A throwing `n` itself is in the index too; `forces` drops it.
      folded = n: filter (m: forces s.${m}) (state.index.${toLower n} or [ ]);
      # Lazy: a later spelling is only tried (forced) while all before found nothing.
      tries = [ (exact c) (folded c) ]
        ++ (if isDigit (substring 0 1 c) then [ (exact "_${c}") (folded "_${c}") ] else [ ]);
      hit = builtins.foldl' (acc: t: if acc != [ ] then acc else t) [ ] tries;
    in
    if !(isSet s) then { kind = "not_found"; }
    else if hit == [ ] then { kind = "not_found"; }
    else if length hit == 1 then found (state.attr ++ hit) s.${builtins.head hit}
    else { kind = "ambiguous"; candidates = map (m: dotted (state.attr ++ [ m ])) hit; };

  # The states of every prefix of every requested name, keyed by the prefix
  # as requested ("a", "a.b", ...; the key is injective since components hold
  # no dots). Only the keys are computed eagerly; each state is a thunk
  # built from its parent's, so names with a common prefix share the work
  # and the lowercase indexes.
  prefixes = cs: genList (i: genList (elemAt cs) (i + 1)) (length cs);
  states = listToAttrs (concatMap
    (name: map (p: { name = dotted p; value = stateOf p; }) (prefixes (splitDots name)))
    names);
  stateOf = p:
    let
      n = length p;
      parent = if n == 1 then root else states.${dotted (genList (elemAt p) (n - 1))};
    in
    if parent ? kind then parent else step parent (elemAt p (n - 1));

  lookup = name: states.${dotted (splitDots name)};

  isDerivation = v:
    let r = tryEval (isAttrs v && (v.type or null) == "derivation"); in
    r.success && r.value;

  # meta fields: strings only, each forced on its own (see the header).
  # `or null` also covers a meta (or v) that is not a set.
  nonEmpty = s: if isString s && s != "" then s else null;
  licenseName = l:
    if isString l then l
    else if isAttrs l then
      let picks = filter (x: x != null) (map (k: nonEmpty (l.${k} or null)) [ "spdxId" "shortName" "fullName" ]);
      in if picks == [ ] then throw "resolve-names: license without a name" else builtins.head picks
    else throw "resolve-names: license of an unknown shape";
  licenseOf = l:
    if builtins.isList l then concatStringsSep " AND " (map licenseName l) else licenseName l;
  metaField = v: k:
    let r = tryEval (nonEmpty (if k == "license" then licenseOf (v.meta.license or null) else v.meta.${k} or null));
    in if r.success then r.value else null;
  metaOf = v:
    filter (f: f.value != null)
      (map (k: { name = k; value = metaField v k; }) [ "mainProgram" "license" "homepage" "description" ]);

  resolve = name:
    let
      st = lookup name;
      v = st.value;
      # `or null`: a missing attribute is an error tryEval cannot catch.
      drv = tryEval (v.drvPath or null);
      out = tryEval (v.outPath or null);
      usable = r: r.success && isString r.value;
    in
    if st ? kind then { inherit name; } // st
    else if !(isDerivation v && usable drv && usable out)
    then { inherit name; kind = "not_a_derivation"; }
    # The key is `out`, not `outPath`: toJSON turns any set that has an
    # outPath into just that string.
    else {
      inherit name;
      attr = dotted st.attr;
      drv = drv.value;
      out = out.value;
    } // (let m = metaOf v; in if m == [ ] then { } else { meta = listToAttrs m; });

  results = map resolve names;
in
# Load the set even for an empty request, so that a bad source is an error
# (rc 1) rather than an empty, successful answer.
if !(isAttrs pkgs) then throw "resolve-names: the package source is not an attribute set"
else {
  ok = filter (r: !(r ? kind)) results;
  errors = filter (r: r ? kind) results;
}
