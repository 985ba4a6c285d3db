// Memory and search latency of the package index (src/packages/index.ts) on
// a synthetic package set the size of nixpkgs: 100,000 entries named like
// nixpkgs (top-level `htop`, `lighttpd`, `python3`, ...; nested
// `python311Packages.requests`, `haskellPackages.QuickCheck`,
// `perlPackages.DBI`, `nodePackages.typescript`, ...), versions, and
// descriptions of about 60 characters (a few with non-ASCII characters,
// as in nixpkgs). Deterministic (seeded).
//
//   npx tsc -p tsconfig.build.json && node --expose-gc bench/package-index.mjs
//
// (re-runs itself with --expose-gc when started without it). Prints:
//   entries=, build_ms=, json_mb= (serialised), json_gzip_mb=
//   index_heap_mb=        V8 heap held by the index (heapUsed after gc, with
//                         and without it; the entries it was built from stay
//                         alive in both measurements)
//   index_external_mb=    off-heap bytes it holds (the UTF-8 text buffer)
//   index_total_mb=       both
//   search_ms_p50[q]=, search_ms_p99[q]= for each query, and the top results
//   search_ms_p50=        median over every search of 'ht', 'python', 'requests'
import { spawnSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';

if (typeof global.gc !== 'function') {
  const r = spawnSync(process.execPath, ['--expose-gc', ...process.argv.slice(1)], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}

const { PackageIndex } = await import('../dist/packages/index.js');

// --------------------------------------------------------------- synthetic set
let seed = 42;
function rnd() {
  // mulberry32
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
}
const pick = (a) => a[Math.floor(rnd() * a.length)];
const SYL = ['ht', 'op', 'lib', 'gtk', 'qt', 'x', 'py', 'req', 'uest', 'net', 'ssl', 'http', 'ld', 'tpd', 'ng', 'ix',
  'mu', 'tt', 'fire', 'fox', 'kde', 'gnome', 'vim', 'emacs', 'zip', 'tar', 'git', 'hub', 'core', 'utils', 'tool', 'kit',
  'data', 'base', 'sql', 'ite', 'pg', 'my', 'red', 'is', 'mongo', 'go', 'rust', 'cargo', 'node', 'js', 'ts', 'web',
  'socket', 'json', 'yaml', 'toml', 'xml', 'parse', 'er', 'ing', 'a', 'e', 'o', 'u', 'ma', 'ri', 'ko', 'sen', 'tor'];
const WORDS = ['library', 'for', 'the', 'and', 'fast', 'simple', 'HTTP', 'client', 'server', 'parser', 'bindings',
  'to', 'a', 'tool', 'command-line', 'interface', 'Python', 'Haskell', 'implementation', 'of', 'with', 'support',
  'modern', 'lightweight', 'secure', 'web', 'framework', 'utilities', 'GNU', 'terminal', 'editor', 'viewer',
  'process', 'network', 'file', 'system', 'manager', 'JSON', 'YAML', 'data', 'analysis', 'testing', 'Unicode',
  'plugin', 'extension', 'font', 'graphics', 'audio', 'video', 'stream', 'compression', 'archive', 'format'];
const NON_ASCII = ['Gödel', 'naïve', 'café', '— ', 'Zürich', '→'];

function word(min, max) {
  const k = min + Math.floor(rnd() * (max - min + 1));
  let s = '';
  for (let i = 0; i < k; i++) s += pick(SYL);
  return s;
}
function description() {
  let d = '';
  while (d.length < 50 + rnd() * 20) d += (d ? ' ' : '') + pick(WORDS);
  if (rnd() < 0.01) d += ` ${pick(NON_ASCII)}`;
  return d[0].toUpperCase() + d.slice(1);
}
function version() {
  return `${Math.floor(rnd() * 10)}.${Math.floor(rnd() * 30)}.${Math.floor(rnd() * 20)}`;
}
const capitalised = (s) => s[0].toUpperCase() + s.slice(1);

// Sets and shares of the 100,000 entries, roughly as in nixpkgs.
const SETS = [
  ['', 30000, (w) => w + (rnd() < 0.3 ? `-${word(1, 2)}` : '') + (rnd() < 0.1 ? String(Math.floor(rnd() * 20)) : '')],
  ['python311Packages', 12000, (w) => w + (rnd() < 0.3 ? `-${word(1, 2)}` : '')],
  ['python312Packages', 12000, (w) => w + (rnd() < 0.3 ? `-${word(1, 2)}` : '')],
  ['haskellPackages', 18000, (w) => (rnd() < 0.3 ? capitalised(w) : w) + (rnd() < 0.4 ? `-${word(1, 2)}` : '')],
  ['perlPackages', 4000, (w) => capitalised(w) + capitalised(word(1, 2))],
  ['nodePackages', 3000, (w) => w + (rnd() < 0.5 ? `-${word(1, 2)}` : '')],
  ['rPackages', 12000, (w) => (rnd() < 0.5 ? capitalised(w) : w)],
  ['emacsPackages', 5000, (w) => `${w}-mode`],
  ['xorg', 1000, (w) => `lib${capitalised(w)}`],
  ['ocamlPackages', 3000, (w) => `${w}_${word(1, 1)}`],
];
let entries = [];
const known = ['htop', 'lighttpd', 'python3', 'python311', 'git', 'hello', 'httpie', 'nghttp2', 'python311Packages.requests',
  'python312Packages.requests', 'python311Packages.requests-toolbelt', 'haskellPackages.QuickCheck', 'haskellPackages.http-client'];
for (const attr of known) entries.push({ attr, version: version(), description: description() });
const seen = new Set(known);
for (const [set, count, shape] of SETS) {
  let made = 0;
  while (made < count) {
    const name = shape(word(1, 4));
    const attr = set ? `${set}.${name}` : name;
    if (seen.has(attr)) continue;
    seen.add(attr);
    made++;
    entries.push({ attr, ...(rnd() < 0.95 ? { version: version() } : {}), ...(rnd() < 0.9 ? { description: description() } : {}) });
  }
}
entries.length = 100_000;
// As the server gets them (JSON.parse of Nix's output): flat strings, not the
// ropes `+=` built above (building the index would flatten those and so
// free memory, making the measurement below meaningless).
entries = JSON.parse(JSON.stringify(entries));
const chars = entries.reduce((n, e) => n + e.attr.length + (e.version?.length ?? 0) + (e.description?.length ?? 0), 0);
console.log(`entries=${entries.length} mean_attr_chars=${(entries.reduce((n, e) => n + e.attr.length, 0) / entries.length).toFixed(1)} mean_description_chars=${(entries.reduce((n, e) => n + (e.description?.length ?? 0), 0) / entries.length).toFixed(1)} payload_mb=${(chars / 1e6).toFixed(1)}`);

// ------------------------------------------------------------------- memory
const mb = (b) => (b / 1024 / 1024).toFixed(1);
function settle() {
  for (let i = 0; i < 4; i++) global.gc();
  const m = process.memoryUsage();
  return { heap: m.heapUsed, external: m.arrayBuffers };
}
// Built twice: memory with the index held, and after dropping it (the
// entries stay alive throughout; the difference is the index alone).
new PackageIndex(entries); // warm up the code
const t0 = performance.now();
let index = new PackageIndex(entries);
const buildMs = performance.now() - t0;
const withIndex = settle();
index = null;
const without = settle();
index = new PackageIndex(entries);
const heap = withIndex.heap - without.heap;
const external = withIndex.external - without.external;
console.log(`build_ms=${buildMs.toFixed(0)}`);
console.log(`index_heap_mb=${mb(heap)}`);
console.log(`index_external_mb=${mb(external)}`);
console.log(`index_total_mb=${mb(heap + external)} (bytes_per_entry=${((heap + external) / index.size).toFixed(0)})`);

// For comparison: the entries as plain objects (one object and up to three strings each).
{
  const b = settle();
  const copy = JSON.parse(JSON.stringify(entries));
  const a = settle();
  console.log(`plain_objects_heap_mb=${mb(a.heap - b.heap)} (the naive alternative, ${copy.length} objects)`);
}

const json = JSON.stringify(index);
const gz = gzipSync(json);
const t1 = performance.now();
index = PackageIndex.fromJSON(JSON.parse(json));
console.log(`json_mb=${mb(json.length)} json_gzip_mb=${mb(gz.length)} from_json_ms=${(performance.now() - t1).toFixed(0)}`);

// ------------------------------------------------------------------ latency
function percentile(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}
const QUERIES = ['ht', 'python', 'requests'];
const all = [];
for (const q of [...QUERIES, 'a', 'quickcheck', 'nosuchthing']) {
  for (let i = 0; i < 20; i++) index.search(q); // warm up
  const times = [];
  for (let i = 0; i < 200; i++) {
    const t = performance.now();
    index.search(q);
    times.push(performance.now() - t);
  }
  if (QUERIES.includes(q)) all.push(...times);
  const top = index.search(q, 5).map((e) => e.attr).join(' ');
  console.log(`search_ms_p50[${q}]=${percentile(times, 50).toFixed(3)} search_ms_p99[${q}]=${percentile(times, 99).toFixed(3)} top5: ${top}`);
}
console.log(`search_ms_p50=${percentile(all, 50).toFixed(3)}`);
