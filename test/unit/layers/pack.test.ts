import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile, chmod, link, readdir, lstat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collector } from '../../helpers/collector.js';
import { packLayer, type TarEntry } from '../../../src/layers/pack.js';
import { storePathEntries } from '../../../src/layers/walk.js';

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;


function fileEntry(name: string, content: string | Buffer, mode = 0o444): TarEntry {
  const buf = Buffer.from(content);
  return { name, type: 'file', mode, size: buf.length, open: () => Readable.from([buf]) };
}

async function pack(entries: Iterable<TarEntry> | AsyncIterable<TarEntry>, gzipLevel?: number) {
  const { out, bytes } = collector();
  const result = await packLayer(entries, out, gzipLevel === undefined ? {} : { gzipLevel });
  return { ...result, bytes: bytes() };
}

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'nixery-pack-'));
});
afterAll(async () => {
  await execa('chmod', ['-R', 'u+w', tmp]);
  await rm(tmp, { recursive: true, force: true });
});

/** `tar -tv` of a gzipped tarball, with full times and numeric owners. */
async function tarList(gz: Buffer): Promise<string[]> {
  const file = path.join(tmp, `list-${Math.random().toString(36).slice(2)}.tar.gz`);
  await writeFile(file, gz);
  const { stdout } = await execa('tar', ['--numeric-owner', '--full-time', '-tvzf', file]);
  return stdout.split('\n');
}

const LONG_DIR = `nix/store/${'a'.repeat(32)}-${'long-directory-name-'.repeat(4)}`;
const LONG_NAME = `${LONG_DIR}/${'f'.repeat(120)}`;

function sample(): TarEntry[] {
  return [
    { name: 'nix', type: 'directory', mode: 0o555 },
    { name: 'nix/store', type: 'directory', mode: 0o555 },
    { name: 'nix/store/x-pkg', type: 'directory', mode: 0o555 },
    { name: 'nix/store/x-pkg/bin', type: 'directory', mode: 0o555 },
    fileEntry('nix/store/x-pkg/bin/prog', '#!/bin/sh\necho hi\n', 0o555),
    { name: 'nix/store/x-pkg/bin/prog-link', type: 'symlink', mode: 0o777, linkname: 'prog' },
    { name: 'nix/store/x-pkg/bin/prog-hard', type: 'hardlink', mode: 0o555, linkname: 'nix/store/x-pkg/bin/prog' },
    fileEntry('nix/store/x-pkg/empty', ''),
    fileEntry('nix/store/x-pkg/setuid', 'x', 0o4755),
    fileEntry('nix/store/x-pkg/mode-zero', 'x', 0),
    fileEntry('nix/store/x-pkg/caf\u00e9', 'utf-8 name'),
    { name: LONG_DIR, type: 'directory', mode: 0o555 },
    fileEntry(LONG_NAME, 'long'),
    { name: `${LONG_DIR}/long-link`, type: 'symlink', mode: 0o777, linkname: `/${LONG_NAME}` },
  ];
}

describe('packLayer', () => {
  it('writes a tar that GNU tar lists with the given modes, owner 0/0 and mtime 1', async () => {
    const { bytes } = await pack(sample());
    const lines = await tarList(bytes);
    const expected: Array<[string, string]> = [
      ['dr-xr-xr-x', 'nix/'],
      ['dr-xr-xr-x', 'nix/store/'],
      ['dr-xr-xr-x', 'nix/store/x-pkg/'],
      ['dr-xr-xr-x', 'nix/store/x-pkg/bin/'],
      ['-r-xr-xr-x', 'nix/store/x-pkg/bin/prog'],
      ['lrwxrwxrwx', 'nix/store/x-pkg/bin/prog-link -> prog'],
      ['hr-xr-xr-x', 'nix/store/x-pkg/bin/prog-hard link to nix/store/x-pkg/bin/prog'],
      ['-r--r--r--', 'nix/store/x-pkg/empty'],
      ['-rwsr-xr-x', 'nix/store/x-pkg/setuid'],
      ['----------', 'nix/store/x-pkg/mode-zero'],
      ['-r--r--r--', 'nix/store/x-pkg/caf\u00e9'],
      ['dr-xr-xr-x', `${LONG_DIR}/`],
      ['-r--r--r--', LONG_NAME],
      ['lrwxrwxrwx', `${LONG_DIR}/long-link -> /${LONG_NAME}`],
    ];
    expect(lines).toHaveLength(expected.length);
    lines.forEach((line, i) => {
      const [mode, rest] = expected[i] as [string, string];
      // e.g. "-r-xr-xr-x 0/0  18 1970-01-01 00:00:01 nix/store/x-pkg/bin/prog"
      const m = /^(\S+) (\d+)\/(\d+)\s+(\d+) (\S+ \S+) (.*)$/.exec(line);
      expect(m, line).not.toBeNull();
      const [, gotMode, uid, gid, , time, name] = m as RegExpExecArray;
      expect(gotMode).toBe(mode);
      expect([uid, gid]).toEqual(['0', '0']);
      expect(time).toBe('1970-01-01 00:00:01');
      expect(name).toBe(rest);
    });
  });

  it('gives byte-identical output and digests for the same entries', async () => {
    const a = await pack(sample());
    const b = await pack(sample());
    expect(a.bytes.equals(b.bytes)).toBe(true);
    expect(a.diffId).toBe(b.diffId);
    expect(a.digest).toBe(b.digest);
  });

  it('reports sha256 of the uncompressed tar as diffId and of the gzip bytes as digest', async () => {
    const { bytes, diffId, digest, size } = await pack(sample());
    expect(size).toBe(bytes.length);
    expect(digest).toBe(sha256(bytes));
    const { stdout } = await execa('gzip', ['-dc'], { input: bytes, encoding: 'buffer' });
    expect(diffId).toBe(sha256(stdout));
    expect(diffId).toBe(sha256(gunzipSync(bytes)));
  });

  it('writes a gzip header without file name or time', async () => {
    const { bytes } = await pack(sample());
    expect([...bytes.subarray(0, 3)]).toEqual([0x1f, 0x8b, 8]);
    expect(bytes[3]).toBe(0); // FLG: no FNAME, FCOMMENT, FEXTRA
    expect(bytes.readUInt32LE(4)).toBe(0); // MTIME
  });

  it('lets the caller choose the gzip level without changing the diffId', async () => {
    const fast = await pack([fileEntry('a', 'hello '.repeat(10_000))], 1);
    const best = await pack([fileEntry('a', 'hello '.repeat(10_000))], 9);
    const stored = await pack([fileEntry('a', 'hello '.repeat(10_000))], 0);
    expect(fast.diffId).toBe(best.diffId);
    expect(stored.diffId).toBe(best.diffId);
    expect(fast.digest).not.toBe(best.digest);
    expect(stored.size).toBeGreaterThan(60_000);
    await expect(packLayer([], collector().out, { gzipLevel: 10 })).rejects.toThrow(RangeError);
  });

  it('writes just the end-of-archive blocks for no entries', async () => {
    const { bytes } = await pack([]);
    expect(gunzipSync(bytes).equals(Buffer.alloc(1024))).toBe(true);
  });

  it('accepts an async iterable and opens files only when their turn comes, one at a time', async () => {
    let open = 0;
    let maxOpen = 0;
    const opened: string[] = [];
    async function* entries(): AsyncGenerator<TarEntry> {
      for (let i = 0; i < 20; i++) {
        const name = `f${String(i).padStart(2, '0')}`;
        const data = randomBytes(200_000);
        yield {
          name,
          type: 'file',
          mode: 0o444,
          size: data.length,
          open: () => {
            opened.push(name);
            open++;
            maxOpen = Math.max(maxOpen, open);
            const r = Readable.from([data.subarray(0, 100_000), data.subarray(100_000)]);
            r.on('close', () => open--);
            return r;
          },
        };
      }
    }
    const { bytes } = await pack(entries());
    expect(opened).toHaveLength(20);
    expect(maxOpen).toBe(1);
    expect((await tarList(bytes)).length).toBe(20);
  });

  it('does not read ahead of a slow consumer', async () => {
    // Incompressible data, so gzip cannot hide what is buffered.
    const block = randomBytes(1 << 20);
    const total = 64;
    let produced = 0;
    let consumedCompressed = 0;
    let worstLead = 0;
    const source = new Readable({
      read() {
        if (produced === total << 20) return void this.push(null);
        produced += block.length;
        this.push(block);
      },
    });
    const out = new Writable({
      highWaterMark: 64 * 1024,
      write(chunk: Buffer, _enc, cb) {
        consumedCompressed += chunk.length;
        worstLead = Math.max(worstLead, produced - consumedCompressed);
        setImmediate(cb);
      },
    });
    // Level 0 (stored): zlib's speed is not what this test is about.
    const result = await packLayer([{ name: 'big', type: 'file', mode: 0o444, size: total << 20, open: () => source }], out, {
      gzipLevel: 0,
    });
    expect(result.size).toBeGreaterThan(total << 20);
    // About ten stream stages each may hold one 1 MiB read chunk; without
    // backpressure the whole 64 MiB would be read before the consumer saw much.
    expect(worstLead).toBeLessThan(16 << 20);
  });

  it('rejects and destroys the output when the signal aborts', async () => {
    const controller = new AbortController();
    const block = randomBytes(1 << 16);
    let reads = 0;
    const endless = new Readable({
      read() {
        if (++reads === 20) controller.abort();
        this.push(block);
      },
    });
    const { out } = collector();
    const packing = packLayer(
      [{ name: 'endless', type: 'file', mode: 0o444, size: 1 << 40, open: () => endless }],
      out,
      { signal: controller.signal },
    );
    await expect(packing).rejects.toMatchObject({ name: 'AbortError' });
    expect(out.destroyed).toBe(true);
    expect(endless.destroyed).toBe(true);
  });

  it('rejects on abort even while a file source has stalled', async () => {
    const controller = new AbortController();
    let started = false;
    const stalled = new Readable({
      read() {
        if (started) return; // never another byte
        started = true;
        this.push(Buffer.alloc(1000));
        setTimeout(() => controller.abort(), 20);
      },
    });
    const packing = packLayer(
      [{ name: 'stalled', type: 'file', mode: 0o444, size: 5000, open: () => stalled }],
      collector().out,
      { signal: controller.signal },
    );
    await expect(packing).rejects.toMatchObject({ name: 'AbortError' });
    expect(stalled.destroyed).toBe(true);
  });

  it('rejects at once with an already aborted signal', async () => {
    const reason = new Error('client went away');
    await expect(packLayer(sample(), collector().out, { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
  });

  it('rejects with the reader error when a file cannot be read', async () => {
    const boom = new Error('EIO: disk on fire');
    const failing = new Readable({
      read() {
        this.destroy(boom);
      },
    });
    const { out } = collector();
    await expect(
      packLayer([fileEntry('ok', 'fine'), { name: 'bad', type: 'file', mode: 0o444, size: 10, open: () => failing }], out),
    ).rejects.toBe(boom);
    expect(out.destroyed).toBe(true);
  });

  it('rejects when a file is shorter or longer than its declared size', async () => {
    const short: TarEntry = { name: 'short', type: 'file', mode: 0o444, size: 10, open: () => Readable.from([Buffer.from('abc')]) };
    await expect(packLayer([short], collector().out)).rejects.toThrow(/size mismatch/i);
    const long: TarEntry = { name: 'long', type: 'file', mode: 0o444, size: 1, open: () => Readable.from([Buffer.from('abc')]) };
    await expect(packLayer([long], collector().out)).rejects.toThrow(/size mismatch/i);
  });

  it('rejects when the entry iterator throws, and when the output fails', async () => {
    const oops = new Error('listing failed');
    async function* entries(): AsyncGenerator<TarEntry> {
      yield fileEntry('a', 'a');
      throw oops;
    }
    await expect(packLayer(entries(), collector().out)).rejects.toBe(oops);

    const full = new Error('ENOSPC');
    const out = new Writable({ write: (_c, _e, cb) => cb(full) });
    await expect(packLayer(sample(), out)).rejects.toBe(full);
  });

  it.each([
    ['absolute', '/etc/passwd'],
    ['parent', 'nix/../../etc/passwd'],
    ['dot', './nix'],
    ['empty component', 'nix//store'],
    ['trailing slash', 'nix/'],
    ['empty', ''],
  ])('rejects an unclean name (%s)', async (_label, name) => {
    await expect(packLayer([{ name, type: 'directory', mode: 0o755 }], collector().out)).rejects.toThrow(/clean relative path/);
  });

  it('rejects files without size or open(), links without target, and bad modes', async () => {
    await expect(packLayer([{ name: 'a', type: 'file', mode: 0o444 }], collector().out)).rejects.toThrow(/size/);
    await expect(packLayer([{ name: 'a', type: 'file', mode: 0o444, size: 1 }], collector().out)).rejects.toThrow(/open/);
    await expect(packLayer([{ name: 'a', type: 'symlink', mode: 0o777 }], collector().out)).rejects.toThrow(/linkname/);
    await expect(packLayer([{ name: 'a', type: 'directory', mode: 0o10000 }], collector().out)).rejects.toThrow(/mode/);
  });
});

// ---------------------------------------------------------------------------

/** A store-looking hash: 32 characters of Nix's base32 alphabet. */
const hash = (c: string): string => c.repeat(32);

describe('storePathEntries', () => {
  let root: string;
  const pkg = `/nix/store/${hash('1')}-pkg-1.0`;
  const motd = `/nix/store/${hash('2')}-motd`;
  const other = `/nix/store/${hash('3')}-other`;

  beforeAll(async () => {
    root = path.join(tmp, 'root');
    const p = path.join(root, pkg);
    await mkdir(path.join(p, 'bin'), { recursive: true });
    await mkdir(path.join(p, 'lib/a'), { recursive: true });
    await writeFile(path.join(p, 'bin/prog'), '#!/bin/sh\necho prog\n');
    await chmod(path.join(p, 'bin/prog'), 0o555);
    await symlink('prog', path.join(p, 'bin/alias'));
    await link(path.join(p, 'bin/prog'), path.join(p, 'lib/z-hardlink'));
    await writeFile(path.join(p, 'lib/a.txt'), 'a');
    await writeFile(path.join(p, 'lib/a-b'), 'a-b');
    await writeFile(path.join(p, 'lib/a/b'), 'b');
    await writeFile(path.join(p, 'lib/\u00e9t\u00e9'), 'summer');
    await execa('mkfifo', [path.join(p, 'lib/fifo')]);
    await writeFile(path.join(root, motd), 'hello\n');
    await mkdir(path.join(root, other));
    // Same inode as pkg's bin/prog, but a separate walk: must be a plain file there.
    await link(path.join(p, 'bin/prog'), path.join(root, other, 'prog'));
    for (const d of ['bin', 'lib/a', 'lib', '.']) await chmod(path.join(p, d), 0o555);
    for (const f of ['lib/a.txt', 'lib/a-b', 'lib/a/b', 'lib/\u00e9t\u00e9']) await chmod(path.join(p, f), 0o444);
  });

  const collect = async (paths: string[], hardLinks: 'copy' | 'preserve' = 'copy'): Promise<TarEntry[]> => {
    const out: TarEntry[] = [];
    for await (const e of storePathEntries(paths, { root, hardLinks })) out.push(e);
    return out;
  };

  it('lists nix, nix/store and every path in full-name byte order, with lstat modes', async () => {
    const entries = await collect([pkg, motd]);
    const p = pkg.slice(1);
    expect(entries.map(({ name, type, mode, linkname, size }) => ({ name, type, mode, linkname, size }))).toEqual([
      { name: 'nix', type: 'directory', mode: 0o555 },
      { name: 'nix/store', type: 'directory', mode: 0o555 },
      { name: p, type: 'directory', mode: 0o555 },
      { name: `${p}/bin`, type: 'directory', mode: 0o555 },
      { name: `${p}/bin/alias`, type: 'symlink', mode: 0o777, linkname: 'prog' },
      { name: `${p}/bin/prog`, type: 'file', mode: 0o555, size: 20 },
      { name: `${p}/lib`, type: 'directory', mode: 0o555 },
      // '-' < '.' < '/': the directory's own entry sorts as "a", its contents as "a/".
      { name: `${p}/lib/a`, type: 'directory', mode: 0o555 },
      { name: `${p}/lib/a-b`, type: 'file', mode: 0o444, size: 3 },
      { name: `${p}/lib/a.txt`, type: 'file', mode: 0o444, size: 1 },
      { name: `${p}/lib/a/b`, type: 'file', mode: 0o444, size: 1 },
      // lib/fifo is skipped: no FIFOs in an image.
      // A hard link is written as a plain file by default: NARs have none, so
      // the layer must not depend on whether this store was optimised.
      { name: `${p}/lib/z-hardlink`, type: 'file', mode: 0o555, size: 20 },
      { name: `${p}/lib/\u00e9t\u00e9`, type: 'file', mode: 0o444, size: 6 },
      { name: motd.slice(1), type: 'file', mode: expect.any(Number), size: 6 },
    ]);
    const names = entries.map((e) => e.name);
    const byBytes = [...names].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    expect(names).toEqual(byBytes);
  });

  it('sorts store paths, drops duplicates, and with hardLinks: preserve tracks hard links per layer only', async () => {
    const entries = await collect([other, pkg, other], 'preserve');
    const names = entries.map((e) => e.name);
    expect(names.filter((n) => n === other.slice(1))).toHaveLength(1);
    expect(names.indexOf(pkg.slice(1))).toBeLessThan(names.indexOf(other.slice(1)));
    // bin/prog comes first in the layer; both later names of that inode link to it.
    const hard = entries.filter((e) => e.type === 'hardlink');
    expect(hard.map((e) => [e.name, e.linkname])).toEqual([
      [`${pkg.slice(1)}/lib/z-hardlink`, `${pkg.slice(1)}/bin/prog`],
      [`${other.slice(1)}/prog`, `${pkg.slice(1)}/bin/prog`],
    ]);
    const alone = await collect([other], 'preserve');
    expect(alone.find((e) => e.name === `${other.slice(1)}/prog`)?.type).toBe('file');
  });

  it('rejects things that are not store paths, and missing store paths', async () => {
    await expect(collect(['/etc'])).rejects.toThrow(/not a store path/);
    await expect(collect([`${pkg}/bin`])).rejects.toThrow(/not a store path/);
    await expect(collect([`/nix/store/${hash('9')}-missing`])).rejects.toThrow(/ENOENT/);
  });

  it('packs into a tar that GNU tar unpacks to the same tree', async () => {
    const { out, bytes } = collector();
    const result = await packLayer(storePathEntries([pkg, motd], { root, hardLinks: 'preserve' }), out);
    const file = path.join(tmp, 'walk.tar.gz');
    await writeFile(file, bytes());
    expect(result.digest).toBe(sha256(bytes()));
    const dest = path.join(tmp, 'unpacked');
    await mkdir(dest);
    await execa('tar', ['-xzf', file, '-C', dest]);
    const p = pkg.slice(1);
    expect(await readFile(path.join(dest, p, 'bin/prog'), 'utf8')).toBe('#!/bin/sh\necho prog\n');
    expect(await readFile(path.join(dest, p, 'lib/a/b'), 'utf8')).toBe('b');
    expect(await readFile(path.join(dest, motd.slice(1)), 'utf8')).toBe('hello\n');
    expect((await lstat(path.join(dest, p, 'bin/alias'))).isSymbolicLink()).toBe(true);
    const prog = await lstat(path.join(dest, p, 'bin/prog'));
    expect(prog.nlink).toBe(2);
    expect((await lstat(path.join(dest, p, 'lib/z-hardlink'))).ino).toBe(prog.ino);
    expect((await readdir(path.join(dest, p, 'lib'))).sort()).toEqual(['a', 'a-b', 'a.txt', 'z-hardlink', '\u00e9t\u00e9']);
  });
});
