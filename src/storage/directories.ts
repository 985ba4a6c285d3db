/**
 * `mkdir -p` that always ends. Node's `mkdir(dir, { recursive: true })`
 * loops forever when a parent exists but refuses children (any path under
 * /proc: mkdir answers ENOENT, the parent answers EEXIST, and it starts
 * over), which made `STORAGE_PATH=/proc/x` hang start-up instead of failing.
 */
import { mkdir, stat } from 'node:fs/promises';
import path from 'node:path';

export async function makeDirectory(dir: string): Promise<void> {
  const attempt = async (): Promise<'made' | 'no-parent'> => {
    try {
      await mkdir(dir);
      return 'made';
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST' && (await stat(dir)).isDirectory()) return 'made';
      if (code === 'ENOENT') return 'no-parent';
      throw e;
    }
  };
  if ((await attempt()) === 'made') return;
  const parent = path.dirname(dir);
  if (parent !== dir) await makeDirectory(parent);
  // Once more, and only once, now that the parent exists.
  if ((await attempt()) === 'no-parent') {
    throw Object.assign(new Error(`ENOENT: cannot create directory '${dir}' (its parent refuses new entries)`), { code: 'ENOENT' });
  }
}
