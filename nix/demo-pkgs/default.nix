# nixery-ts demo package set: a small, offline stand-in for nixpkgs.
#
# Real, runnable packages made from the host's Debian binaries (no network, no
# nixpkgs), imported like nixpkgs:
#
#   import ./nix/demo-pkgs { system = "x86_64-linux"; salt = "run-42"; }
#   nix-build nix/demo-pkgs -A htop --no-out-link
#
# Each package copies programs and libraries from the host (for aarch64-linux
# on an x86_64 host: from an arm64 Debian sysroot, see below) and patches them
# (builder.sh) so they load the demo glibc and the lib/ dirs of their declared
# dependencies from the store; Nix then sees those as runtime references and
# closures look like nixpkgs ones (one shared glibc leaf, ncurses shared by
# bash/htop/nano, ...). The set is deterministic on a given host, but its
# bytes follow the host's Debian versions: tests compute digests and sizes,
# they never hard-code them.
#
# Host requirements (the project's setup and CI must install them):
#   apt-get install -y nix-bin patchelf busybox-static htop jq git curl nano \
#                      moreutils gcc ca-certificates netbase perl openssl python3.11
# (bash, coreutils, dpkg, mawk come with every Debian system.) Nix must run
# with `sandbox = false` (builders read /usr, /lib, /etc and /var/lib/dpkg)
# unless those are given as extra-sandbox-paths. A missing host program makes
# the build fail loudly, naming it.
#
# aarch64-linux on an x86_64 host: the same packages made from Debian's arm64
# binaries, which `scripts/setup-system.sh test` unpacks (apt-get download
# PKG:arm64, dpkg-deb -x) into the sysroot /opt/nixery-ts/sysroot-arm64 (it
# also installs qemu-user-static and gcc-aarch64-linux-gnu, needed here). The
# derivations have system "aarch64-linux"; Nix runs them here only with
#   NIX_CONFIG=$'substituters =\nextra-platforms = aarch64-linux'
# (never put that in nix.conf: a server must not claim arm64 by default).
# That is sound only because these builders copy and patch files: the
# builder itself is x86_64 bash; builder-cross.sh runs builder.sh with ldd,
# dpkg -L and gcc answered from the sysroot (gcc is aarch64-linux-gnu-gcc),
# checks that every ELF file it produced is aarch64 and finds every library it
# needs, and the few build steps that run the program just built (busybox
# --list, git --list-cmds, python3's smoke test) run it under
# qemu-aarch64-static. Closures look as on x86_64 (one shared glibc leaf, ...),
# but glibc has no libmvec.so.1 there. Data packages (cacert, iana-etc, ti)
# copy the same arch-independent host files, with system aarch64-linux. The
# x86_64-linux derivations do not depend on any of this (same store paths as
# before it existed). On an aarch64 host, aarch64-linux is native (host files).
#
# Import arguments:
#   system        target system: x86_64-linux, or aarch64-linux (from the arm64
#                 sysroot when the host is not aarch64, see above). Another one
#                 (e.g. "riscv64-linux") still evaluates but cannot be built
#                 here: a "wrong arch" case.
#   slowSeconds   duration of slow-build / slow-chatty-build.
#   largeBlobMiB  size of large-blob.
#   salt          non-empty: every derivation (also writeText/runCommand
#                 results) gets a new store path, so a test can force fresh
#                 builds in a shared store without deleting anything.
#   hostPath      PATH the builders use to find host programs.
#   arm64Sysroot  where the setup script unpacked the arm64 .debs (a string,
#                 read only by aarch64-linux builders).
#
# Changing what `hello` prints: `hello` prints the bytes of ./greeting.txt
# verbatim (they are compiled into the program). A test copies this directory,
# writes e.g. `printf 'Hi from v2\n' > greeting.txt`, and `hello` (only hello
# and what depends on it) gets a new store path that prints the new text.
#
# Test fixtures besides the packages: tools.greet (nested set), extraPackages
# (camelCase set with nested members), _7zip (name starting with a digit),
# caseFixture (names matched case-insensitively at every level:
# caseFixture.Greet and caseFixture.GREET differ only in case, so
# "casefixture.greet" is ambiguous while "caseFixture.GREET" is exact;
# caseFixture._7zip is "casefixture.7zip"; caseFixture.Inner.HelloWorld is
# "casefixture.inner.helloworld"; these nested sets are marked
# recurseForDerivations, like nixpkgs' package sets), notAPackage (not a
# derivation), removedPackage (throws when evaluated, like nixpkgs' removed
# aliases), motd
# (single-file store path), large-blob, broken-build, slow-build,
# slow-chatty-build (these three also evaluate for aarch64-linux, as
# host-only shell builders), x86only (a C program using the x86 cpuid
# instruction: builds for x86_64-linux only; for any other system the
# attribute throws "demo-pkgs: x86only is not available on aarch64-linux
# (platforms: x86_64-linux)", which nix-instantiate -A prints and which
# prepare-image/resolve-names.nix counts as not found, like nixpkgs' packages
# whose platforms exclude the system).
#
# meta: the programs carry nixpkgs-style `meta` (description, mainProgram,
# license as lib.licenses-like sets, homepage), added to each derivation's
# result rather than passed to `derivation`, so meta never changes a store
# path. acl (two SPDX licenses) and _7zip (one with no spdxId, like nixpkgs'
# unfreeRedistributable) have license lists; libraries such as glibc have an
# empty meta, and writeText/runCommand results (motd) none at all.
{ system ? builtins.currentSystem
, slowSeconds ? 300
, largeBlobMiB ? 16
, salt ? ""
, hostPath ? "/usr/bin:/bin:/usr/sbin:/sbin"
, arm64Sysroot ? "/opt/nixery-ts/sysroot-arm64"
, ...   # accept (and ignore) whatever nixpkgs-style callers pass
}:

let
  # Programs are copied from the machine that builds them, so library
  # locations follow the *host*; `system` only decides the derivations'
  # system field (and therefore whether this machine can build them).
  hostInfo = {
    "x86_64-linux" = { triple = "x86_64-linux-gnu"; ldso = "ld-linux-x86-64.so.2"; };
    "aarch64-linux" = { triple = "aarch64-linux-gnu"; ldso = "ld-linux-aarch64.so.1"; };
  }.${builtins.currentSystem}
    or (throw "demo-pkgs: unsupported build host ${builtins.currentSystem}");
  hostLibDir = "/lib/${hostInfo.triple}";

  # Foreign systems whose Debian binaries come from a sysroot (see the header).
  sysroots = {
    "aarch64-linux" = {
      root = arm64Sysroot;
      triple = "aarch64-linux-gnu";
      ldso = "ld-linux-aarch64.so.1";
      elfMachine = "b7";                      # e_machine EM_AARCH64
      emulator = "/usr/bin/qemu-aarch64-static";
    };
  };
  cross = system != builtins.currentSystem && builtins.hasAttr system sysroots;
  target = sysroots.${system};
  # Spliced into the few build snippets that read Debian files or run what
  # was just built; both are "" natively, so those snippets (and the native
  # derivations) stay exactly as they were.
  root = if cross then target.root else "";
  run = if cross then "${target.emulator} " else "";
  # nixpkgs-style meta.platforms: elsewhere the attribute throws (an
  # evaluation error naming the system; resolve-names counts it as absent).
  onlyOn = platforms: pkg:
    if builtins.elem system platforms then pkg
    else throw "demo-pkgs: ${pkg.pname or pkg.name} is not available on ${system} (platforms: ${builtins.concatStringsSep ", " platforms})";

  # Every derivation goes through here so the salt reaches all of them.
  mkDrv = attrs: derivation (attrs // { inherit system; }
    // (if salt == "" then { } else { demoSalt = salt; }));

  # A package assembled by builder.sh from host files (see its header).
  mkPkg =
    { pname
    , version ? ""
    , bins ? [ ]          # absolute host paths copied to bin/
    , debPackage ? ""     # copy every bin/ file of this Debian package
    , libs ? [ ]          # sonames this package provides (from hostLibDir)
    , deps ? [ glibc ]    # packages whose lib/ goes into RUNPATH
    , cSource ? null      # C file compiled to bin/${cProgram}
    , cProgram ? pname
    , keepSourceRef ? false
    , embed ? null        # bytes the C program sees as `embedded[]`
    , bundleLibs ? true
    , patchElf ? true
    , preFixup ? ""
    , postInstall ? ""
      # meta (nixpkgs' names and shapes): never part of the derivation, see below.
    , description ? ""
    , mainProgram ? null
    , license ? null      # an entry of `licenses` below, a list of them, or a string
    , homepage ? null
    }:
    mkDrv ({
      name = if version == "" then pname else "${pname}-${version}";
      inherit pname version hostPath hostLibDir debPackage cProgram preFixup postInstall deps;
      builder = "/bin/sh";
      args = [ "-e" ./builder.sh ];
      bins = toString bins;
      libs = toString libs;
      cSource = if cSource == null then "" else cSource;
      keepSourceRef = if keepSourceRef then "1" else "0";
      interpreter = if pname == "glibc" then "" else "${glibc}/lib/${hostInfo.ldso}";
      bundleLibs = if bundleLibs then "1" else "0";
      patchElf = if patchElf then "1" else "0";
    } // (if embed == null then { } else {
      # passAsFile: the text reaches the builder byte for byte as a file.
      inherit embed;
      passAsFile = [ "embed" ];
    }) // (if !cross then { } else {
      # The same builder.sh, run by builder-cross.sh against the sysroot.
      args = [ "-e" ./builder-cross.sh ];
      genericBuilder = ./builder.sh;
      sysroot = target.root;
      hostLibDir = "${target.root}/usr/lib/${target.triple}";
      bins = toString (map (b: target.root + b) bins);
      interpreter = if pname == "glibc" then "" else "${glibc}/lib/${target.ldso}";
      crossPrefix = target.triple;
      inherit (target) elfMachine emulator;
    }))
    # `derivation` turns every attribute into an environment variable of the
    # builder (and so into the .drv), so meta is added to the result instead:
    # adding or editing it never changes a store path. Unset fields are left
    # out (glibc's meta is {}); writeText/runCommand results have no meta.
    // { meta = lib.filterAttrs (_: v: v != null && v != "") { inherit description mainProgram license homepage; }; };

  # Licenses shaped like nixpkgs' lib.licenses entries (spdxId, shortName,
  # fullName, url, free), for meta.license; prepare-image/resolve-names.nix
  # reads spdxId, else shortName, else fullName.
  licenses =
    let spdx = shortName: spdxId: fullName: {
      inherit shortName spdxId fullName;
      url = "https://spdx.org/licenses/${spdxId}.html";
      free = true; redistributable = true; deprecated = false;
    };
    in {
      gpl2Only = spdx "gpl2Only" "GPL-2.0-only" "GNU General Public License v2.0 only";
      gpl2Plus = spdx "gpl2Plus" "GPL-2.0-or-later" "GNU General Public License v2.0 or later";
      gpl3Plus = spdx "gpl3Plus" "GPL-3.0-or-later" "GNU General Public License v3.0 or later";
      lgpl21Plus = spdx "lgpl21Plus" "LGPL-2.1-or-later" "GNU Lesser General Public License v2.1 or later";
      mit = spdx "mit" "MIT" "MIT License";
      asl20 = spdx "asl20" "Apache-2.0" "Apache License 2.0";
      curl = spdx "curl" "curl" "curl License";
      psfl = spdx "psfl" "Python-2.0" "Python Software Foundation License version 2";
      mpl20 = spdx "mpl20" "MPL-2.0" "Mozilla Public License 2.0";
      # Like nixpkgs' entry: no SPDX identifier at all.
      unfreeRedistributable = {
        shortName = "unfreeRedistributable";
        fullName = "Unfree redistributable";
        free = false; redistributable = true; deprecated = false;
      };
    };

  # ------------------------------------------------ nixpkgs-style helpers
  # Just enough of nixpkgs' trivial builders for Nixery-style expressions
  # (symlink forests, runtime-graph JSON); there is no stdenv here.
  runCommand = name: env: buildCommand:
    let inputs = (env.buildInputs or [ ]) ++ (env.nativeBuildInputs or [ ]);
    in mkDrv ({
      inherit name buildCommand;
      builder = "/bin/bash";
      args = [ "-e" (env.builder or runCommandBuilder) ];
      PATH = builtins.concatStringsSep ":" (map (p: "${p}/bin") inputs ++ [ hostPath ]);
      SOURCE_DATE_EPOCH = "315532800";
    } // builtins.removeAttrs env [ "builder" "buildInputs" "nativeBuildInputs" ]);

  # With __structuredAttrs the outputs come from .attrs.sh, not from $out.
  runCommandBuilder = builtins.toFile "run-command-builder.sh" ''
    if [ -e .attrs.sh ]; then
      . ./.attrs.sh
      for o in "''${!outputs[@]}"; do export "$o=''${outputs[$o]}"; done
    fi
    eval "$buildCommand"
  '';

  writeText = name: text: mkDrv {
    inherit name text;
    builder = "/bin/sh";
    passAsFile = [ "text" ];
    args = [ "-c" "/bin/cp \"$textPath\" \"$out\"" ];
  };

  # Like nixpkgs: the first path wins on conflicts; single-file store paths
  # (e.g. motd) are skipped because there is nothing to link into a tree.
  symlinkJoin = { name, paths, postBuild ? "", ... }@args:
    runCommand name (builtins.removeAttrs args [ "name" "paths" "postBuild" ] // {
      inherit paths postBuild;
    }) ''
      mkdir -p $out
      for i in $paths; do
        [ -d "$i" ] || continue
        cp -rsnT "$i" "$out"
        chmod -R u+w "$out"
      done
      eval "$postBuild"
    '';

  # The nixpkgs `lib` functions that package lookups (Nixery's deepFetch and
  # prepare-image/resolve-names.nix callers) reach for.
  lib = rec {
    inherit (builtins) filter attrNames attrValues listToAttrs hasAttr elem
      concatStringsSep head tail length mapAttrs;
    splitString = sep: s:
      builtins.filter builtins.isString (builtins.split (escapeRegex sep) s);
    escapeRegex = builtins.replaceStrings
      [ "\\" "." "+" "*" "?" "(" ")" "[" "]" "{" "}" "|" "^" "$" ]
      [ "\\\\" "\\." "\\+" "\\*" "\\?" "\\(" "\\)" "\\[" "\\]" "\\{" "\\}" "\\|" "\\^" "\\$" ];
    attrByPath = path: default: set:
      if path == [ ] then set
      else
        let h = builtins.head path; in
        if builtins.isAttrs set && builtins.hasAttr h set
        then attrByPath (builtins.tail path) default set.${h}
        else default;
    getAttrFromPath = path: set:
      attrByPath path (throw "cannot find attribute '${concatStringsSep "." path}'") set;
    upperChars = builtins.genList (i: builtins.substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26;
    lowerChars = builtins.genList (i: builtins.substring i 1 "abcdefghijklmnopqrstuvwxyz") 26;
    toLower = builtins.replaceStrings upperChars lowerChars;
    toUpper = builtins.replaceStrings lowerChars upperChars;
    hasPrefix = pre: s: builtins.substring 0 (builtins.stringLength pre) s == pre;
    optionalString = cond: s: if cond then s else "";
    isDerivation = v: builtins.isAttrs v && (v.type or null) == "derivation";
    filterAttrs = pred: set: builtins.listToAttrs (builtins.concatMap
      (name: let v = set.${name}; in if pred name v then [ { inherit name; value = v; } ] else [ ])
      (builtins.attrNames set));
  };

  # ------------------------------------------------------------ libraries
  glibc = mkPkg {
    pname = "glibc";
    version = "2.36";
    libs =
      let all = [ hostInfo.ldso "libc.so.6" "libm.so.6" "libmvec.so.1" "libresolv.so.2"
                  "libpthread.so.0" "libdl.so.2" "librt.so.1" "libutil.so.1" "libanl.so.1"
                  "libnss_files.so.2" "libnss_dns.so.2" ];
      in if cross   # the ld.so of the target; no libmvec on aarch64 (glibc 2.36)
         then [ target.ldso ] ++ builtins.filter (l: l != hostInfo.ldso && l != "libmvec.so.1") all
         else all;
    deps = [ ];
    bundleLibs = false;
    patchElf = false;   # libc.so.6 is itself executable; leave glibc untouched
  };

  # Terminfo database. Debian's libtinfo only looks in the compiled-in
  # "/etc/terminfo:/lib/terminfo:/usr/share/terminfo" (47 chars), and an image
  # holds ncurses' files only under /nix/store, so interactive programs would
  # die with "Error opening terminal". The ncurses package overwrites that
  # string in place with this store path; the two-letter name keeps the path
  # (46 chars, any salt) short enough to fit.
  ti = mkPkg {
    pname = "ti";
    deps = [ ];
    postInstall = "cp -r /lib/terminfo/. $out/";
  };
  ncurses = mkPkg {
    pname = "ncurses";
    version = "6.4";
    libs = [ "libncursesw.so.6" "libtinfo.so.6" ];
    preFixup = ''
      chmod u+w $out/lib/libtinfo.so.6
      TI=${ti} perl -pi -e 's{(/etc/terminfo:/lib/terminfo:/usr/share/terminfo)}{
          length($ENV{TI}) <= length($1) or die "store path too long";
          $ENV{TI} . chr(0) x (length($1) - length($ENV{TI})) }e' $out/lib/libtinfo.so.6
      grep -q "${ti}" $out/lib/libtinfo.so.6 || { echo "terminfo path not patched" >&2; exit 1; }
      mkdir -p $out/share
      ln -s ${ti} $out/share/terminfo
    '';
  };
  zlib = mkPkg { pname = "zlib"; version = "1.2.13"; libs = [ "libz.so.1" ]; };
  pcre2 = mkPkg { pname = "pcre2"; version = "10.42"; libs = [ "libpcre2-8.so.0" ]; };
  openssl = mkPkg {
    pname = "openssl";
    version = "3.0";
    bins = [ "/usr/bin/openssl" ];
    libs = [ "libssl.so.3" "libcrypto.so.3" ];
  };
  libnl = mkPkg { pname = "libnl"; version = "3.7.0"; libs = [ "libnl-3.so.200" "libnl-genl-3.so.200" ]; };
  oniguruma = mkPkg { pname = "oniguruma"; version = "6.9.8"; libs = [ "libonig.so.5" ]; };
  libselinux = mkPkg {
    pname = "libselinux";
    version = "3.4";
    libs = [ "libselinux.so.1" ];
    deps = [ glibc pcre2 ];
  };
  acl = mkPkg {
    pname = "acl";
    version = "2.3.1";
    libs = [ "libacl.so.1" "libattr.so.1" ];
    # A list, as in nixpkgs (the tools are GPL, the libraries LGPL).
    license = [ licenses.gpl2Plus licenses.lgpl21Plus ];
    homepage = "https://savannah.nongnu.org/projects/acl";
  };
  gmp = mkPkg { pname = "gmp"; version = "6.2.1"; libs = [ "libgmp.so.10" ]; };

  # ------------------------------------------------------------- programs
  bash = mkPkg {
    pname = "bash";
    version = "5.2.15";
    bins = [ "/usr/bin/bash" ];
    deps = [ glibc ncurses ];
    postInstall = "ln -s bash $out/bin/sh";
    description = "GNU Bourne-Again SHell";
    mainProgram = "bash";
    license = licenses.gpl3Plus;
    homepage = "https://www.gnu.org/software/bash/";
  };
  coreutils = mkPkg {
    pname = "coreutils";
    version = "9.1";
    debPackage = "coreutils";
    deps = [ glibc libselinux pcre2 acl gmp ];
    description = "GNU core utilities";
    license = licenses.gpl3Plus;
    homepage = "https://www.gnu.org/software/coreutils/";
  };
  busybox = mkPkg {
    pname = "busybox";
    version = "1.35.0";
    bins = [ "/usr/bin/busybox" ];   # static: no references at all
    deps = [ ];
    postInstall = ''
      for a in $(${run}$out/bin/busybox --list); do
        [ "$a" = busybox ] || ln -s busybox $out/bin/$a
      done
    '';
    description = "Tiny versions of common UNIX utilities (static)";
    license = licenses.gpl2Only;
    homepage = "https://busybox.net/";
  };

  # The greeting is read at evaluation time, so editing greeting.txt changes
  # hello's derivation (and store path) and nothing else.
  greeting = builtins.readFile ./greeting.txt;
  hello = mkPkg {
    pname = "hello";
    version = "2.12";
    embed = greeting;
    cSource = builtins.toFile "hello.c" ''
      #include <stdio.h>
      #include <string.h>
      #include "embed.h"
      int main(int argc, char **argv) {
        if (argc > 1 && strcmp(argv[1], "--version") == 0) {
          puts("hello (nixery-ts demo) 2.12");
          return 0;
        }
        fputs(embedded, stdout);
        return 0;
      }
    '';
    description = "Prints the greeting from nix/demo-pkgs/greeting.txt";
    mainProgram = "hello";
    license = licenses.gpl3Plus;
    homepage = "https://www.gnu.org/software/hello/";
  };
  htop = mkPkg {
    pname = "htop";
    version = "3.2.2";
    bins = [ "/usr/bin/htop" ];
    deps = [ glibc ncurses libnl ];
    description = "Interactive process viewer";
    mainProgram = "htop";
    license = licenses.gpl2Only;
    homepage = "https://htop.dev/";
  };
  jq = mkPkg {
    pname = "jq";
    version = "1.6";
    bins = [ "/usr/bin/jq" ];          # libjq.so.1 is bundled privately
    deps = [ glibc oniguruma ];
    description = "Command-line JSON processor";
    mainProgram = "jq";
    license = licenses.mit;
    homepage = "https://jqlang.github.io/jq/";
  };
  # The Debian binary holds every builtin (init/add/commit/log/clone from a
  # local path, ...) but looks for helpers in /usr/lib/git-core and templates
  # in /usr/share/git-core. So the binary moves to libexec/git-core with a
  # link per builtin, and bin/git becomes a bash wrapper that points git at
  # them (which also puts bash in git's closure, as in nixpkgs). No http(s)
  # or ssh transports, no perl/shell helpers.
  git = mkPkg {
    pname = "git";
    version = "2.39";
    bins = [ "/usr/bin/git" ];
    deps = [ glibc pcre2 zlib ];
    postInstall = ''
      mkdir -p $out/libexec/git-core $out/share/git-core
      mv $out/bin/git $out/libexec/git-core/git
      for c in $(${run}$out/libexec/git-core/git --list-cmds=builtins); do
        [ "$c" = git ] || ln -s git $out/libexec/git-core/git-$c
      done
      cp -r ${root}/usr/share/git-core/templates $out/share/git-core/templates
      cat > $out/bin/git <<WRAPPER
      #!${bash}/bin/bash
      export GIT_EXEC_PATH=$out/libexec/git-core
      export GIT_TEMPLATE_DIR=\''${GIT_TEMPLATE_DIR:-$out/share/git-core/templates}
      exec $out/libexec/git-core/git "\$@"
      WRAPPER
      chmod +x $out/bin/git
      for c in upload-pack receive-pack upload-archive; do ln -s git $out/bin/git-$c; done
    '';
    description = "Distributed version control system (local operations only)";
    mainProgram = "git";
    license = licenses.gpl2Only;
    homepage = "https://git-scm.com/";
  };
  curl = mkPkg {
    pname = "curl";
    version = "7.88.1";
    bins = [ "/usr/bin/curl" ];        # libcurl + ~25 libs bundled privately
    deps = [ glibc zlib openssl ];
    description = "Command-line URL transfer tool";
    mainProgram = "curl";
    license = licenses.curl;
    homepage = "https://curl.se/";
  };
  nano = mkPkg {
    pname = "nano";
    version = "7.2";
    bins = [ "/usr/bin/nano" ];
    deps = [ glibc ncurses ];
    description = "Small, friendly text editor";
    mainProgram = "nano";
    license = licenses.gpl3Plus;
    homepage = "https://www.nano-editor.org/";
  };
  moreutils = mkPkg {
    pname = "moreutils";
    version = "0.67";
    # Only the ELF tools; the perl scripts (ts, vidir, ...) would need perl.
    bins = map (n: "/usr/bin/${n}") [ "errno" "ifdata" "ifne" "isutf8" "lckdo" "mispipe" "pee" "sponge" ];
    description = "More Unix tools (sponge, ifne, pee, ...)";
    license = licenses.gpl2Plus;
    homepage = "https://joeyh.name/code/moreutils/";
  };
  # Debian's interpreter with its standard library. Python derives sys.prefix
  # from the executable's location (it finds lib/python3.11/os.py above
  # bin/), so $out/bin/python3.11 + $out/lib/python3.11 run from the store
  # without reading /usr/lib/python3.11. The stdlib is exactly the files of
  # the Debian packages libpython3.11-minimal and libpython3.11-stdlib (not
  # the host directory, which other installed packages add to): no
  # __pycache__ (Debian generates those at install time), no
  # config-3.11-*/ (libpython3.11-dev: static lib for embedding), no
  # sitecustomize.py (a link to /etc/python3.11, Debian's apport hook), no
  # distutils/lib2to3/ensurepip (separate Debian packages), and no nis
  # extension (deprecated; it would bundle the Kerberos libraries). zlib and
  # pyexpat are built into the binary; the extensions in lib-dynload load
  # OpenSSL (_ssl, _hashlib), ncurses (_curses, readline) and the demo glibc
  # from those packages and get private copies of the rest (libexpat, libffi,
  # libbz2, liblzma, libsqlite3, libdb, libuuid, libreadline, ...) in lib/.
  # Nothing is byte-compiled: the build checks that no .pyc file exists.
  # The store here is writable by root (no daemon, no read-only mount), so a
  # root run of this python would write __pycache__ into its own store path
  # (changing its NAR hash): run it from the host store with -B or
  # PYTHONDONTWRITEBYTECODE=1, as the build's smoke test and the tests do.
  python3 = mkPkg {
    pname = "python3";
    version = "3.11";
    bins = [ "/usr/bin/python3.11" ];
    deps = [ glibc zlib openssl ncurses ];
    preFixup = ''
      export PYTHONDONTWRITEBYTECODE=1
      stdlib=$(dpkg -L libpython3.11-minimal libpython3.11-stdlib 2>/dev/null |
        grep '^${root}/usr/lib/python3\.11/' | LC_ALL=C sort -u) || true
      for f in $stdlib; do
        case "$f" in
          */__pycache__/*|*.pyc|*/lib-dynload/nis.*|*/sitecustomize.py) continue ;;
        esac
        dst=$out/lib/''${f#${root}/usr/lib/}
        if [ -L "$f" ]; then
          case "$(readlink "$f")" in /*) die "absolute link in the stdlib: $f" ;; esac
          mkdir -p "$(dirname "$dst")"
          cp -P "$f" "$dst"
        elif [ -f "$f" ]; then
          mkdir -p "$(dirname "$dst")"
          cp "$f" "$dst"
        fi
      done
      [ -f $out/lib/python3.11/os.py ] ||
        die "no Python 3.11 stdlib from dpkg -L libpython3.11-minimal libpython3.11-stdlib (apt-get install -y python3.11)"
      # Private copies of what the extensions need beyond the declared deps
      # (builder.sh step 4 only looks at bin/ and lib/ themselves).
      for f in $out/lib/python3.11/lib-dynload/*.so; do
        ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' |
        while read -r soname path; do
          providedByDeps "$soname" && continue
          [ -e "$out/lib/$soname" ] && continue
          cp -L "$path" "$out/lib/$soname"
        done
      done
    '';
    postInstall = ''
      ln -s python3.11 $out/bin/python3
      # Smoke test from the store (-B and PYTHONDONTWRITEBYTECODE: no .pyc).
      prefix=$(env -i PYTHONDONTWRITEBYTECODE=1 ${run}$out/bin/python3 -B -I -c '
      import json, zlib, pyexpat, hashlib, ssl, ctypes, sqlite3, bz2, lzma, decimal, curses, readline, uuid, dbm
      import sys; print(sys.prefix)')
      [ "$prefix" = "$out" ] || die "sys.prefix is '$prefix', not $out"
      if [ -n "$(find $out \( -name __pycache__ -o -name '*.pyc' \) -print)" ]; then
        die "byte-compiled files in the output"
      fi
    '';
    description = "Python 3.11 interpreter and standard library (from Debian)";
    mainProgram = "python3";
    license = licenses.psfl;
    homepage = "https://www.python.org/";
  };
  cacert = mkPkg {
    pname = "nss-cacert";
    version = "debian";
    deps = [ ];
    postInstall = ''
      mkdir -p $out/etc/ssl/certs
      cp /etc/ssl/certs/ca-certificates.crt $out/etc/ssl/certs/ca-bundle.crt
      ln -s ca-bundle.crt $out/etc/ssl/certs/ca-certificates.crt
    '';
    description = "CA certificate bundle (from Debian's ca-certificates)";
    license = licenses.mpl20;
    homepage = "https://tracker.debian.org/pkg/ca-certificates";
  };
  iana-etc = mkPkg {
    pname = "iana-etc";
    version = "debian";
    deps = [ ];
    postInstall = ''
      mkdir -p $out/etc
      cp /etc/services /etc/protocols $out/etc/
    '';
    description = "/etc/services and /etc/protocols (from Debian's netbase)";
  };

  # Compiled from a store file directly: the binary keeps a reference to
  # greet.c, so its closure holds a single-file store path.
  greet = mkPkg {
    pname = "greet";
    version = "1.0";
    keepSourceRef = true;
    cSource = builtins.toFile "greet.c" ''
      #include <stdio.h>
      int main(int argc, char **argv) {
        printf("Hello from the fixture, %s!\n", argc > 1 ? argv[1] : "world");
        return 0;
      }
    '';
    description = "Greets its first argument";
  };

  # Attribute names cannot start with a digit without quoting, so nixpkgs
  # names such packages with a leading underscore (_7zz, _3proxy); Nixery maps
  # a requested "7zip" to "_7zip".
  _7zip = mkPkg {
    pname = "7zip";
    version = "16.02";
    cProgram = "7z";
    cSource = builtins.toFile "7z.c" ''
      #include <stdio.h>
      int main(void) {
        puts("7-Zip (nixery-ts demo stand-in) 16.02");
        return 0;
      }
    '';
    description = "Stand-in for 7-Zip: prints a fixed line";
    mainProgram = "7z";
    # A list with an entry that has no spdxId, like nixpkgs' _7zz with unfree codecs.
    license = [ licenses.lgpl21Plus licenses.unfreeRedistributable ];
  };

  # Incompressible but deterministic payload (AES-CTR keystream of zeros), for
  # layer-size and streaming tests.
  large-blob = mkPkg {
    pname = "large-blob";
    version = "1";
    deps = [ ];
    postInstall = ''
      mkdir -p $out/share
      head -c ${toString (largeBlobMiB * 1048576)} /dev/zero |
        openssl enc -aes-128-ctr -nosalt -K 00000000000000000000000000000000 \
          -iv 00000000000000000000000000000000 > $out/share/blob.bin
    '';
    description = "${toString largeBlobMiB} MiB of deterministic random-looking bytes";
  };

  # Only for x86_64-linux (see the fixture list): the x86 cpuid instruction.
  x86only = onlyOn [ "x86_64-linux" ] (mkPkg {
    pname = "x86only";
    version = "1.0";
    cSource = builtins.toFile "x86only.c" ''
      #include <cpuid.h>
      #include <stdio.h>
      #include <string.h>
      int main(void) {
        unsigned a, b, c, d;
        char vendor[13] = "unknown";
        if (__get_cpuid(0, &a, &b, &c, &d)) {
          memcpy(vendor, &b, 4); memcpy(vendor + 4, &d, 4); memcpy(vendor + 8, &c, 4);
          vendor[12] = 0;
        }
        printf("x86only (nixery-ts demo) 1.0: x86-64, CPU vendor %s\n", vendor);
        return 0;
      }
    '';
    description = "Prints the CPU vendor with the x86 cpuid instruction (x86_64-linux only)";
  });

  # ------------------------------------------------- deliberate failures
  broken-build = mkDrv {
    name = "broken-build-1.0";
    builder = "/bin/sh";
    args = [ "-c" "echo 'broken-build: this package fails on purpose' >&2; exit 1" ];
  };
  # One line, then silence: trips --max-silent-time (then it would succeed).
  slow-build = mkDrv {
    name = "slow-build-1.0";
    builder = "/bin/sh";
    args = [ "-c" "echo 'slow-build: sleeping ${toString slowSeconds}s'; /bin/sleep ${toString slowSeconds}; /bin/mkdir $out" ];
  };
  # Output every second: trips only --timeout.
  slow-chatty-build = mkDrv {
    name = "slow-chatty-build-1.0";
    builder = "/bin/sh";
    args = [ "-c" "i=0; while [ $i -lt ${toString slowSeconds} ]; do echo tick $i; i=$((i+1)); /bin/sleep 1; done; /bin/mkdir $out" ];
  };

in
{
  inherit lib runCommand writeText symlinkJoin;
  inherit glibc ncurses zlib pcre2 openssl libnl oniguruma libselinux acl gmp;
  inherit bash coreutils busybox hello htop jq git curl nano moreutils python3 cacert iana-etc;
  inherit _7zip x86only large-blob broken-build slow-build slow-chatty-build;
  bashInteractive = bash;     # camelCase alias with the same store path, like nixpkgs
  motd = writeText "motd" "Welcome to a nixery-ts demo image.\n";
  # Nested sets are marked `recurseForDerivations = true` (nixpkgs'
  # recurseIntoAttrs): the package index (prepare-image/list-packages.nix)
  # lists the derivations of such sets only. The marker is an attribute of a
  # plain set, never of a derivation: no store path changes.
  tools = { inherit greet hello; recurseForDerivations = true; };   # nested, like xorg.xev
  extraPackages = {                                           # like python3Packages.foo
    inherit greet jq;
    prettyJson = jq;
    recurseForDerivations = true;
  };
  caseFixture = {                                             # see the fixture list above
    Greet = greet;
    GREET = hello;                                            # differs from Greet only in case
    inherit _7zip;
    Inner = { HelloWorld = hello; recurseForDerivations = true; };
    recurseForDerivations = true;
  };
  notAPackage = { description = "a plain attribute set, not a derivation"; };
  # Like nixpkgs' removed aliases: evaluating it throws (resolve-names says
  # not_found, the package index leaves it out).
  removedPackage = throw "demo-pkgs: removedPackage has been removed (like a nixpkgs alias of a removed package)";
}
