/**
 * The start page: web/index.html with the real host name in its pull
 * examples, the configured package source and the recent build failures.
 * WEB_DIR replaces the bundled directory; files other than index.html are
 * served as they are.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { RecentError } from '../service/recent-errors.js';

export interface StartPageInfo {
  readonly webDir: string;
  readonly source: string;
}

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

function renderErrors(errors: readonly RecentError[]): string {
  if (errors.length === 0) return '<p class="none">No failed builds since the server started.</p>';
  return `<ul class="errors">${errors
    .map(
      (e) =>
        `<li><time>${escapeHtml(e.time)}</time> <code>${escapeHtml(e.image)}</code>: ${escapeHtml(e.message)}` +
        (e.stderr ? `<pre>${escapeHtml(e.stderr)}</pre>` : '') +
        '</li>',
    )
    .join('')}</ul>`;
}

export interface RunningBuild {
  readonly image: string;
  readonly packages: readonly string[];
  readonly seconds: number;
}

function renderRunning(builds: readonly RunningBuild[]): string {
  if (builds.length === 0) return '<p class="none">Nothing is being built right now.</p>';
  return `<ul class="running">${builds
    .map((b) => `<li><code>${escapeHtml(b.image)}</code> (${escapeHtml(b.packages.join(', '))}), for ${Math.round(b.seconds)} s</li>`)
    .join('')}</ul>`;
}

/** Undefined when the path names no file of the web directory. */
export async function renderStartPage(
  info: StartPageInfo,
  live: { host: string; recentErrors: readonly RecentError[]; running: readonly RunningBuild[] },
  requestPath: string,
): Promise<string | undefined> {
  const rel = requestPath === '/' ? 'index.html' : requestPath.replace(/^\/+/, '');
  const file = path.resolve(info.webDir, rel);
  if (!file.startsWith(path.resolve(info.webDir) + path.sep)) return undefined;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  if (!rel.endsWith('index.html')) return text;
  return text
    .replaceAll('{{HOST}}', escapeHtml(live.host))
    .replaceAll('{{SOURCE}}', escapeHtml(info.source))
    .replaceAll('{{RUNNING}}', renderRunning(live.running))
    .replaceAll('{{ERRORS}}', renderErrors(live.recentErrors));
}
