/**
 * Users from an htpasswd file with bcrypt entries (`htpasswd -B`), the
 * format CNCF distribution and zot read. Other hash kinds (MD5 `$apr1$`,
 * SHA1 `{SHA}`, crypt) are refused by line number: they are weak, and
 * accepting them silently would make the file's meaning depend on us.
 *
 * The file is polled and re-read when it changes (a Kubernetes Secret is
 * replaced by a symlink swap, which a watch on the file misses), so a user
 * added or removed takes effect within the poll interval, without a restart.
 * A file that became invalid is logged and the last valid one stays in force.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import bcrypt from 'bcryptjs';

/** A bcrypt hash as htpasswd and other tools write it. */
const BCRYPT = /^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$/;


export class HtpasswdError extends Error {}

/** Parses an htpasswd file's text; throws HtpasswdError naming the first bad line. */
export function parseHtpasswd(text: string, file: string): Map<string, string> {
  const users = new Map<string, string>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '' || line.trimStart().startsWith('#')) return;
    const colon = line.indexOf(':');
    const user = colon > 0 ? line.slice(0, colon) : '';
    const hash = colon > 0 ? line.slice(colon + 1).trim() : '';
    const where = `${file} line ${i + 1}`;
    if (user === '') throw new HtpasswdError(`${where} is not user:hash`);
    if (!BCRYPT.test(hash)) {
      throw new HtpasswdError(`${where} (user ${JSON.stringify(user)}) is not a bcrypt hash; write it with htpasswd -B`);
    }
    if (users.has(user)) throw new HtpasswdError(`${where}: user ${JSON.stringify(user)} appears twice`);
    users.set(user, hash);
  });
  return users;
}

export interface HtpasswdOptions {
  /** How often the file is checked for changes. */
  readonly pollMs?: number;
  /** Told when a re-read fails (the previous users stay in force). */
  readonly onReloadError?: (message: string) => void;
  /** Told after a successful re-read. */
  readonly onReload?: (users: number) => void;
}

export class Htpasswd {
  private users: Map<string, string>;
  private fingerprint: string;
  private timer: NodeJS.Timeout | undefined;
  private lastError: string | undefined;
  /** Compared against for an unknown user, so that it costs the same as a wrong password (at the file's own cost). */
  private dummyHash: string;
  /** Bumped on every successful reload: caches of verifications compare it. */
  generation = 0;

  private constructor(
    private readonly file: string,
    first: { users: Map<string, string>; fingerprint: string },
    private readonly opts: HtpasswdOptions,
  ) {
    this.users = first.users;
    this.fingerprint = first.fingerprint;
    this.dummyHash = dummyFor(this.users);
    this.timer = setInterval(() => void this.poll(), opts.pollMs ?? 2000);
    this.timer.unref();
  }

  /** Reads the file; throws HtpasswdError with one line saying what is wrong. */
  static async open(file: string, opts: HtpasswdOptions = {}): Promise<Htpasswd> {
    return new Htpasswd(file, await Htpasswd.read(file), opts);
  }

  private static async read(file: string): Promise<{ users: Map<string, string>; fingerprint: string }> {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (e) {
      throw new HtpasswdError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const users = parseHtpasswd(text, file);
    if (users.size === 0) throw new HtpasswdError(`${file} has no users`);
    return { users, fingerprint: createHash('sha256').update(text).digest('hex') };
  }

  get size(): number {
    return this.users.size;
  }

  /** Whether the password is right for the user; an unknown user costs the same as a wrong password. */
  async verify(user: string, password: string): Promise<boolean> {
    const hash = this.users.get(user);
    const ok = await bcrypt.compare(password, hash ?? this.dummyHash);
    return ok && hash !== undefined;
  }

  /** Checks the file now (the timer does this every poll interval). */
  async poll(): Promise<void> {
    try {
      const next = await Htpasswd.read(this.file);
      this.lastError = undefined;
      if (next.fingerprint === this.fingerprint) return;
      this.users = next.users;
      this.fingerprint = next.fingerprint;
      this.dummyHash = dummyFor(this.users);
      this.generation++;
      this.opts.onReload?.(this.users.size);
    } catch (e) {
      // Said once per distinct problem, not every poll.
      const message = (e as Error).message;
      if (message !== this.lastError) this.opts.onReloadError?.(message);
      this.lastError = message;
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

/** A hash of a random password at the cost the file's first entry uses. */
function dummyFor(users: Map<string, string>): string {
  const first = users.values().next().value as string | undefined;
  const cost = first ? Number(first.slice(4, 6)) : 5;
  return bcrypt.hashSync(createHash('sha256').update(String(Math.random())).digest('hex'), cost);
}
