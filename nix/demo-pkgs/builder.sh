# Generic builder of the nixery-ts demo package set (see default.nix).
#
# A package is assembled from the host's Debian files instead of being built
# from source: programs and libraries are copied into $out, and every dynamic
# ELF file is then re-pointed with patchelf at the demo glibc (interpreter)
# and at the lib/ dirs of its declared dependencies (RUNPATH). Because those
# store paths now appear inside the files, Nix's reference scanner records
# them as runtime references, so closures look like nixpkgs' closures.
#
# Inputs (all environment variables, set by mkPkg in default.nix):
#   hostPath hostLibDir   where host programs and libraries are taken from
#   libs                  sonames copied from $hostLibDir into $out/lib
#   bins                  absolute host paths copied into $out/bin
#   debPackage            a Debian package whose every bin/ file is copied
#   cSource cProgram      a C file compiled with the host gcc to bin/$cProgram
#   keepSourceRef         1: compile the store path itself (see below)
#   embedPath             file whose bytes become `embedded[]` (embed.h)
#   deps                  store paths whose lib/ goes into RUNPATH
#   bundleLibs patchElf   1/0 switches
#   interpreter           the demo glibc's ld.so ("" for glibc itself)
#   preFixup postInstall  shell snippets run before / after patching
set -eu
PATH=$hostPath
export PATH

mkdir -p "$out"

die() { echo "demo-pkgs builder ($name): $*" >&2; exit 1; }
isElf() { [ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; }

# A dependency that already ships a soname is where that library must come
# from (one shared glibc / ncurses in the graph, not private copies).
providedByDeps() {
  for d in $deps; do
    [ -e "$d/lib/$1" ] && return 0
  done
  return 1
}

# 1. Libraries this package provides.
if [ -n "$libs" ]; then
  mkdir -p "$out/lib"
  for l in $libs; do
    [ -e "$hostLibDir/$l" ] || die "missing host library $hostLibDir/$l (install the Debian package that ships it)"
    cp -L "$hostLibDir/$l" "$out/lib/$l"
  done
fi

# 2. Programs: explicit host paths, plus every bin/ file of a Debian package
#    (dpkg -L, so coreutils gets all its programs without a hand-kept list).
binList=$bins
if [ -n "$debPackage" ]; then
  debBins=$(dpkg -L "$debPackage" 2>/dev/null | grep -E '/s?bin/[^/]+$' | sort -u) || true
  [ -n "$debBins" ] || die "Debian package '$debPackage' is not installed (apt-get install -y $debPackage)"
  binList="$binList $debBins"
fi
for b in $binList; do
  [ -e "$b" ] || die "missing host program $b (install the Debian package that ships it)"
  [ -f "$b" ] || continue
  mkdir -p "$out/bin"
  bn=$(basename "$b")
  [ -e "$out/bin/$bn" ] && continue       # /bin and /usr/bin duplicates
  cp -L "$b" "$out/bin/$bn"
done

# 3. C programs compiled at build time with the host gcc (linked against the
#    host glibc, then patched like the copied programs below).
if [ -n "$cSource" ]; then
  command -v gcc >/dev/null || die "gcc is needed (apt-get install -y gcc)"
  mkdir -p "$out/bin"
  if [ -n "${embedPath:-}" ]; then
    # Bytes as a C array: any text (quotes, %, backslashes) survives as is.
    { printf 'static const char embedded[] = {'
      od -An -v -tu1 "$embedPath" | awk '{ for (i = 1; i <= NF; i++) printf "%s,", $i }'
      printf '0};\n'; } > embed.h
  fi
  if [ "$keepSourceRef" = 1 ]; then
    # gcc writes the source file name into the symbol table, so compiling
    # the store path directly makes that single-file store path a runtime
    # reference: a closure with a file (not a directory) in it.
    gcc -O2 -I. -o "$out/bin/$cProgram" "$cSource"
  else
    cp "$cSource" "./$cProgram.c"
    gcc -O2 -I. -o "$out/bin/$cProgram" "./$cProgram.c"
  fi
fi

# 4. Private copies of shared libraries that no dependency provides (curl
#    pulls in ~25 of them; bundling keeps the dependency lists short).
if [ "$bundleLibs" = 1 ] && [ -d "$out/bin" ]; then
  for f in "$out"/bin/* "$out"/lib/*; do
    [ -f "$f" ] && isElf "$f" || continue
    ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' |
    while read -r soname path; do
      providedByDeps "$soname" && continue
      [ -e "$out/lib/$soname" ] && continue
      mkdir -p "$out/lib"
      cp -L "$path" "$out/lib/$soname"
    done
  done
fi

eval "$preFixup"

# 5. Point interpreter and RUNPATH into the store. Static binaries (busybox)
#    have neither and are left alone.
if [ "$patchElf" = 1 ]; then
  rpath=""
  [ -d "$out/lib" ] && rpath="$out/lib"
  for d in $deps; do rpath="${rpath:+$rpath:}$d/lib"; done
  find "$out" -type f | while read -r f; do
    isElf "$f" || continue
    chmod u+w "$f"
    if patchelf --print-interpreter "$f" >/dev/null 2>&1; then
      patchelf --set-interpreter "$interpreter" "$f"
    fi
    if [ -n "$rpath" ] && [ -n "$(patchelf --print-needed "$f" 2>/dev/null)" ]; then
      patchelf --set-rpath "$rpath" "$f"
    fi
  done
fi

eval "$postInstall"
