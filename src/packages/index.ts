/**
 * The package index of one package-set revision: what a user can put in an
 * image name, searched by part of its name (the start page's search box).
 * Pure: built from prepare-image/list-packages.nix's entries, serialised for
 * storage by toJSON/fromJSON.
 *
 * Matching is done on the *image-name spelling* of an attribute path
 * (imageNameOf: ASCII lowercase, and a `_` in front of a leading digit
 * dropped, as resolve-names.nix reads names), and the query is spelled the
 * same way, so `HT`, `ht` and `Ht` are one query and `7zip` finds `_7zip`
 * exactly. Ranking:
 *   0. exact: the whole path, or its last component (`greet` for `tools.greet`);
 *   1. prefix of the whole path or of its last component;
 *   2. anywhere else in the path;
 * and within a rank the shorter attribute path first, then alphabetical
 * (case-insensitive, then by code unit).
 *
 * Memory (nixpkgs has ~100,000 names): no object per entry. Entries are kept
 * in rank order (length, then alphabetical) as
 *   - `haystack`: the spellings joined by "\n" (one flat string, one byte per
 *     character for ASCII names), searched with indexOf;
 *   - `names`: the real attribute paths joined by "\n";
 *   - `text`: versions and descriptions as UTF-8 bytes in one buffer (a
 *     single non-Latin-1 character would make a joined JS string two bytes
 *     per character);
 *   - offsets into each (Uint32Array).
 * Entries are materialised only for the results of a search.
 */
import type { PackageEntry } from '../nix/runner.js';

export type { PackageEntry };

/** The serialised form: parallel arrays, "" for an unknown version or description. */
export interface PackageIndexJSON {
  readonly format: 1;
  readonly attrs: readonly string[];
  readonly versions: readonly string[];
  readonly descriptions: readonly string[];
}

/** Lowercase for ASCII letters only, like resolve-names.nix's toLower (keeps the length). */
function asciiLower(s: string): string {
  return /[A-Z]/.test(s) ? s.replace(/[A-Z]+/g, (m) => m.toLowerCase()) : s;
}

/**
 * How an image name spells an attribute path: each component lowercased
 * (ASCII), and a `_` before a leading digit dropped (`caseFixture._7zip` is
 * `casefixture.7zip`). The spelling prepare-image/list-packages.nix checked
 * to resolve to this very attribute.
 */
export function imageNameOf(attr: string): string {
  return asciiLower(attr)
    .split('.')
    .map((c) => (/^_[0-9]/.test(c) ? c.slice(1) : c))
    .join('.');
}

const DOT = 0x2e;
const RANK_EXACT = 0;
const RANK_PREFIX = 1;
const RANK_SUBSTRING = 2;

export class PackageIndex {
  /** Number of entries. */
  readonly size: number;
  /** Image-name spellings in entry order, joined by "\n". */
  private readonly haystack: string;
  /** Entry i's spelling is haystack[hayStart[i], hayStart[i+1] - 1). */
  private readonly hayStart: Uint32Array;
  /** Real attribute paths, joined by "\n". */
  private readonly names: string;
  private readonly nameStart: Uint32Array;
  /** UTF-8: version i is text[textStart[2i], textStart[2i+1]), description i up to textStart[2i+2]. */
  private readonly text: Buffer;
  private readonly textStart: Uint32Array;

  /**
   * From list-packages.nix's entries, in any order. A repeated attr keeps
   * its first entry; an entry without an attr, or whose attr holds a
   * newline, is left out. Empty versions and descriptions count as unknown.
   */
  constructor(entries: readonly PackageEntry[]) {
    const seen = new Set<string>();
    const kept: PackageEntry[] = [];
    for (const e of entries) {
      if (typeof e.attr !== 'string' || e.attr === '' || e.attr.includes('\n') || seen.has(e.attr)) continue;
      seen.add(e.attr);
      kept.push(e);
    }
    seen.clear();
    const spell = kept.map((e) => imageNameOf(e.attr));
    const order = kept.map((_, i) => i);
    order.sort((a, b) => {
      const ea = kept[a]!.attr;
      const eb = kept[b]!.attr;
      if (ea.length !== eb.length) return ea.length - eb.length;
      const sa = spell[a]!;
      const sb = spell[b]!;
      if (sa !== sb) return sa < sb ? -1 : 1;
      return ea < eb ? -1 : ea > eb ? 1 : 0;
    });

    const n = kept.length;
    this.size = n;
    this.hayStart = new Uint32Array(n + 1);
    this.nameStart = new Uint32Array(n + 1);
    this.textStart = new Uint32Array(2 * n + 1);
    const hay: string[] = new Array<string>(n);
    const names: string[] = new Array<string>(n);
    let hayAt = 0;
    let nameAt = 0;
    let textBytes = 0;
    for (let r = 0; r < n; r++) {
      const i = order[r]!;
      const e = kept[i]!;
      hay[r] = spell[i]!;
      names[r] = e.attr;
      this.hayStart[r] = hayAt;
      this.nameStart[r] = nameAt;
      hayAt += spell[i]!.length + 1;
      nameAt += e.attr.length + 1;
      textBytes += byteLength(e.version) + byteLength(e.description);
    }
    this.hayStart[n] = hayAt;
    this.nameStart[n] = nameAt;
    // A trailing "\n" too, so every spelling ends at hayStart[i+1] - 1.
    // (join of a one-element-longer array rather than `+ "\n"`, which would
    // make a rope that indexOf then flattens into a second copy.)
    hay.push('');
    names.push('');
    this.haystack = hay.join('\n');
    this.names = names.join('\n');
    this.text = Buffer.allocUnsafe(textBytes);
    let at = 0;
    for (let r = 0; r < n; r++) {
      const e = kept[order[r]!]!;
      this.textStart[2 * r] = at;
      at += writeText(this.text, at, e.version);
      this.textStart[2 * r + 1] = at;
      at += writeText(this.text, at, e.description);
    }
    this.textStart[2 * n] = at;
  }

  /**
   * Up to `limit` entries whose attribute path contains the query (see the
   * ranking above). An empty (or blank) query, or one with a newline, finds
   * nothing.
   */
  search(query: string, limit = 20): PackageEntry[] {
    const q = imageNameOf(query.trim());
    const max = Math.floor(limit);
    if (q === '' || q.includes('\n') || !(max > 0) || this.size === 0) return [];
    // Entries are in (length, alphabetical) order and the haystack is scanned
    // forwards, so each rank's list comes out sorted; only ranks 0 and 1 need
    // the whole scan, rank 2 stops growing at `max`.
    const buckets: number[][] = [[], [], []];
    const hay = this.haystack;
    const starts = this.hayStart;
    const n = this.size;
    let entry = 0;
    let pos = hay.indexOf(q);
    while (pos !== -1) {
      entry = this.entryAt(pos, entry);
      const start = starts[entry]!;
      const end = starts[entry + 1]! - 1;
      const last = this.lastComponent(start, end);
      let rank = RANK_SUBSTRING;
      if (end - start === q.length && pos === start) rank = RANK_EXACT;
      else if (end - last === q.length && hay.startsWith(q, last)) rank = RANK_EXACT;
      else if (pos === start || hay.startsWith(q, last)) rank = RANK_PREFIX;
      const bucket = buckets[rank]!;
      if (bucket.length < max) bucket.push(entry);
      if (buckets[RANK_EXACT]!.length >= max) break;
      if (entry + 1 >= n) break;
      pos = hay.indexOf(q, starts[entry + 1]!);
    }
    const picked = [...buckets[0]!, ...buckets[1]!, ...buckets[2]!].slice(0, max);
    return picked.map((i) => this.entry(i));
  }

  /** The entry at position `i` of the index's order (0 <= i < size). */
  entry(i: number): PackageEntry {
    const attr = this.names.slice(this.nameStart[i]!, this.nameStart[i + 1]! - 1);
    const version = this.textOf(2 * i);
    const description = this.textOf(2 * i + 1);
    return { attr, ...(version ? { version } : {}), ...(description ? { description } : {}) };
  }

  /** Every entry, in the index's order (shorter attribute paths first). */
  *entries(): IterableIterator<PackageEntry> {
    for (let i = 0; i < this.size; i++) yield this.entry(i);
  }

  toJSON(): PackageIndexJSON {
    const attrs: string[] = [];
    const versions: string[] = [];
    const descriptions: string[] = [];
    for (let i = 0; i < this.size; i++) {
      attrs.push(this.names.slice(this.nameStart[i]!, this.nameStart[i + 1]! - 1));
      versions.push(this.textOf(2 * i));
      descriptions.push(this.textOf(2 * i + 1));
    }
    return { format: 1, attrs, versions, descriptions };
  }

  /** The inverse of toJSON (also accepts it as a JSON string). Throws on anything else. */
  static fromJSON(json: unknown): PackageIndex {
    const v = (typeof json === 'string' ? JSON.parse(json) : json) as Partial<Record<keyof PackageIndexJSON, unknown>> | null;
    const strings = (a: unknown): a is string[] => Array.isArray(a) && a.every((s) => typeof s === 'string');
    if (
      typeof v !== 'object' || v === null || v.format !== 1 ||
      !strings(v.attrs) || !strings(v.versions) || !strings(v.descriptions) ||
      v.versions.length !== v.attrs.length || v.descriptions.length !== v.attrs.length
    ) {
      throw new Error('package index: not a serialised PackageIndex (format 1)');
    }
    const { attrs, versions, descriptions } = v;
    return new PackageIndex(attrs.map((attr, i) => ({ attr, version: versions[i]!, description: descriptions[i]! })));
  }

  /** The entry whose spelling holds haystack position `pos` (binary search from `from`). */
  private entryAt(pos: number, from: number): number {
    let lo = from;
    let hi = this.size - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.hayStart[mid]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Where the last component of the spelling in haystack[start, end) begins. */
  private lastComponent(start: number, end: number): number {
    // Not lastIndexOf: it would scan back through earlier entries when this one has no dot.
    for (let k = end - 1; k > start; k--) if (this.haystack.charCodeAt(k) === DOT) return k + 1;
    return start;
  }

  private textOf(k: number): string {
    const a = this.textStart[k]!;
    const b = this.textStart[k + 1]!;
    return a === b ? '' : this.text.toString('utf8', a, b);
  }
}

function byteLength(s: string | undefined): number {
  return s ? Buffer.byteLength(s, 'utf8') : 0;
}

function writeText(buf: Buffer, at: number, s: string | undefined): number {
  return s ? buf.write(s, at, 'utf8') : 0;
}
