/**
 * The start page and the rest of the web directory (WEB_DIR, or the bundled
 * web/): `/` and `/index.html` are index.html with the real host name in its
 * pull examples, the package source, the builds running now and the recent
 * build failures; every other file is served as it is by serveStatic (bytes
 * intact, Content-Type from the name); any other path falls through to the
 * app's notFound handler.
 *
 * index.html stays a template with `{{HOST}}`, `{{SOURCE}}`, `{{RUNNING}}`
 * and `{{ERRORS}}` placeholders: WEB_DIR is documented as the directory of
 * the start page, so an operator restyles or rewrites the page in plain HTML
 * without a build step. The file's own text is trusted markup; the values put
 * into it are rendered with hono's `html` template, which does all escaping.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { serveStatic } from '@hono/node-server/serve-static';
import type { Context, Env, Hono, Next } from 'hono';
import { html, raw } from 'hono/html';
import type { RecentError } from '../service/recent-errors.js';

export interface RunningBuild {
  readonly image: string;
  readonly packages: readonly string[];
  readonly seconds: number;
}

export interface StartPageDeps {
  /** Absolute directory. */
  readonly webDir: string;
  /** Description of the package source. */
  readonly source: string;
  /**
   * What the page shows live; called per page view. Undefined when this
   * viewer may not see builds (anonymous, with NIXERY_ANONYMOUS=none).
   */
  readonly live: (c: Context) => Promise<{ running: readonly RunningBuild[]; recentErrors: readonly RecentError[] } | undefined>;
  /** Storage in use and the last garbage-collection pass (figures only, no image names: shown to everyone). */
  readonly storage?: () => StorageSummary;
}

export interface StorageSummary {
  /** Blob bytes after the last pass; undefined before the first. */
  readonly bytes: number | undefined;
  /** Seconds between passes; undefined when no pass is scheduled. */
  readonly intervalSeconds: number | undefined;
  readonly lastPass: { readonly at: string; readonly imagesDropped: number; readonly blobsDeleted: number; readonly bytesDeleted: number } | undefined;
}

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;

function storageSummary(s: StorageSummary | undefined): Html | Promise<Html> {
  if (s === undefined) return html``;
  const schedule =
    s.intervalSeconds === undefined ? html`No garbage collection is scheduled.` : html`Garbage collection runs every ${s.intervalSeconds} s.`;
  const last = s.lastPass
    ? html` Last pass at <time>${s.lastPass.at}</time>: ${s.lastPass.imagesDropped} images dropped, ${s.lastPass.blobsDeleted} blobs deleted (${mb(s.lastPass.bytesDeleted)}); ${mb(s.bytes ?? 0)} of blobs in storage.`
    : html` No pass has run yet.`;
  return html`<p class="storage">${schedule}${last}</p>`;
}

type Html = ReturnType<typeof raw>;

function runningList(builds: readonly RunningBuild[]): Html | Promise<Html> {
  if (builds.length === 0) return html`<p class="none">Nothing is being built right now.</p>`;
  return html`<ul class="running">${builds.map(
    (b) => html`<li><code>${b.image}</code> (${b.packages.join(', ')}), for ${Math.round(b.seconds)} s</li>`,
  )}</ul>`;
}

function errorList(errors: readonly RecentError[]): Html | Promise<Html> {
  if (errors.length === 0) return html`<p class="none">No failed builds since the server started.</p>`;
  return html`<ul class="errors">${errors.map(
    (e) => html`<li><time>${e.time}</time> <code>${e.image}</code>: ${e.message}${e.stderr ? html`<pre>${e.stderr}</pre>` : ''}</li>`,
  )}</ul>`;
}

/** The template's text as trusted markup, each known `{{NAME}}` replaced by its (escaped) value. */
function fill(template: string, values: Record<string, unknown>): Html | Promise<Html> {
  const parts = template.split(/(\{\{[A-Z]+\}\})/).map((part, i) => {
    if (i % 2 === 0) return raw(part);
    const name = part.slice(2, -2);
    return Object.hasOwn(values, name) ? values[name] : raw(part);
  });
  return html`${parts}`;
}

export function registerStartPage<E extends Env>(app: Hono<E>, deps: StartPageDeps): void {
  const root = path.resolve(deps.webDir);
  const index = path.join(root, 'index.html');

  async function page(c: Context, next: Next): Promise<Response | void> {
    // Read per view: an edit to WEB_DIR/index.html shows on the next reload.
    let template: string;
    try {
      template = await readFile(index, 'utf8');
    } catch {
      return next();
    }
    const live = await deps.live(c);
    const hidden = html`<p class="none">Log in to see builds.</p>`;
    return c.html(
      fill(template, {
        HOST: c.req.header('host') ?? 'localhost',
        SOURCE: deps.source,
        RUNNING: live ? runningList(live.running) : hidden,
        ERRORS: live ? errorList(live.recentErrors) : hidden,
        STORAGE: storageSummary(deps.storage?.()),
      }),
    );
  }

  // serveStatic refuses `.`/`..` segments, doubled slashes, backslashes and
  // percent signs in the path; hidden files (`.git/`, `.htpasswd`) are not
  // served either.
  const files = serveStatic({ root });
  app.on(['GET', 'HEAD'], ['/', '/index.html'], page);
  app.on(['GET', 'HEAD'], '*', (c, next) => (/(^|\/)\./.test(c.req.path) ? next() : files(c, next)));
}
