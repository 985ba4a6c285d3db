# Builder of the demo package set for a foreign system (aarch64-linux on an
# x86_64 host; see default.nix): runs the generic builder.sh unchanged, with
# the three host tools it asks about binaries answered from the target's
# Debian sysroot instead of the host, then checks what it produced.
#
# builder.sh (run here with `.`, so these shell functions shadow the host
# programs, also inside preFixup/postInstall snippets):
#   ldd FILE     the sonames FILE needs, transitively (DT_NEEDED read with
#                patchelf, resolved in the sysroot's lib dirs), in ldd's
#                "soname => path" format; nothing is executed
#   dpkg -L PKG  the files of an unpacked .deb ($sysroot/.nixery/lists),
#                prefixed with $sysroot
#   gcc ...      the cross compiler $crossPrefix-gcc
# hostLibDir, bins and interpreter already point into the sysroot and at the
# target's ld.so (set by mkPkg). patchelf is architecture-independent, so
# builder.sh patches the arm64 files exactly as it patches host files.
#
# Inputs besides builder.sh's (set by mkPkg when the system is foreign):
#   genericBuilder  builder.sh
#   sysroot         the unpacked Debian packages (scripts/setup-system.sh test)
#   crossPrefix     GNU triple of the target (aarch64-linux-gnu)
#   elfMachine      the target's ELF e_machine, low byte in hex (b7: aarch64)
#   emulator        qemu-user binary that default.nix splices into the
#                   snippets that run a program just built
#
# After builder.sh, every ELF file in $out must be a target binary (nothing
# copied from the host by mistake) and, where it was patched, its interpreter
# and every library it needs must be found (interpreter path, RUNPATH): a
# library missing from the sysroot fails the build here, naming it, rather
# than in a container.
set -eu
PATH=$hostPath
export PATH

die() { echo "demo-pkgs builder ($name, $system): $*" >&2; exit 1; }

[ -f "$sysroot/.nixery/stamp" ] ||
  die "no $system sysroot at $sysroot (run: bash scripts/setup-system.sh test)"
case "$preFixup$postInstall" in
  *"$emulator"*) [ -x "$emulator" ] || die "$emulator is needed (apt-get install -y qemu-user-static)" ;;
esac

# The library a soname resolves to in the sysroot (Debian's default search
# path of the target: multiarch dir, then /usr/lib).
sysrootLib() {
  for _d in "$sysroot/usr/lib/$crossPrefix" "$sysroot/usr/lib"; do
    if [ -e "$_d/$1" ]; then echo "$_d/$1"; return 0; fi
  done
  return 1
}

ldd() {
  local queue seen f n p
  queue=$1
  seen=" "
  while [ -n "$queue" ]; do
    f=${queue%% *}
    case "$queue" in *" "*) queue=${queue#* } ;; *) queue="" ;; esac
    for n in $(patchelf --print-needed "$f" 2>/dev/null); do
      case "$seen" in *" $n "*) continue ;; esac
      seen="$seen$n "
      case "$n" in ld-linux*) continue ;; esac   # the interpreter: no "=>" line, as in ldd
      if p=$(sysrootLib "$n"); then
        printf '\t%s => %s (0x0)\n' "$n" "$p"
        queue="${queue:+$queue }$p"
      else
        printf '\t%s => not found\n' "$n"
      fi
    done
  done
}

dpkg() {
  [ "${1:-}" = -L ] || die "dpkg $*: only dpkg -L is answered for $system"
  shift
  local p rc
  rc=0
  for p in "$@"; do
    if [ -f "$sysroot/.nixery/lists/$p.list" ]; then
      sed "s|^|$sysroot|" "$sysroot/.nixery/lists/$p.list"
    else
      echo "dpkg-query: package '$p' is not in the $system sysroot $sysroot (add it to ARM64_PACKAGES in scripts/setup-system.sh)" >&2
      rc=1
    fi
  done
  return $rc
}

gcc() {
  command -v "$crossPrefix-gcc" >/dev/null ||
    die "$crossPrefix-gcc is needed to compile for $system (apt-get install -y gcc-$crossPrefix)"
  "$crossPrefix-gcc" "$@"
}

. "$genericBuilder"

# What builder.sh produced.
hint="add the Debian package that ships it to ARM64_PACKAGES in scripts/setup-system.sh"
find "$out" -type f | LC_ALL=C sort | while read -r f; do
  isElf "$f" || continue
  machine=$(od -An -tx1 -j18 -N1 "$f" | tr -d ' \n')
  [ "$machine" = "$elfMachine" ] || die "$f is not an ELF file for $system (e_machine 0x$machine, want 0x$elfMachine)"
  [ "$patchElf" = 1 ] || continue
  if interp=$(patchelf --print-interpreter "$f" 2>/dev/null); then
    [ -e "$interp" ] || die "$f: interpreter $interp does not exist"
  fi
  rpath=$(patchelf --print-rpath "$f" 2>/dev/null) || rpath=""
  for n in $(patchelf --print-needed "$f" 2>/dev/null); do
    case "$n" in ld-linux*) continue ;; esac
    found=0
    for d in $(echo "$rpath" | tr ':' ' '); do
      if [ -e "$d/$n" ]; then found=1; break; fi
    done
    [ "$found" = 1 ] || die "$f needs $n, which no dependency provides and the sysroot lacks ($hint)"
  done
done
