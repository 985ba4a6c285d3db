/**
 * The web pages and the rest of the web directory (WEB_DIR, or the bundled
 * web/):
 *
 *   /, /index.html          the start page: index.html with the real host in
 *                           its pull examples, the package source, the builds
 *                           running now (with progress) and those that ended
 *                           recently, the recent failures with Nix's words,
 *                           storage figures, and a package search that
 *                           composes an image name (web/app.js)
 *   /image/<name>?tag=      the image page (src/http/pages/image.ts)
 *   POST /image/<name>/build  starts a build from a plain form, then back to the image page
 *   /image?name=&meta=      the search form without JavaScript: to the image page
 *   /login?next=            asks the browser for Basic credentials when the API wants them
 *   anything else           a file of WEB_DIR (or, missing there, of the
 *                           bundled web/: style.css and app.js), served as it
 *                           is by serveStatic (bytes intact, Content-Type from
 *                           the name); other paths fall through to notFound
 *
 * The pages take their data from the JSON API under /api/ (src/http/api.ts)
 * exactly as the browser script does: a request to the same app in process,
 * carrying the viewer's Authorization header. So a page shows what the API
 * lets this viewer see (a 401 from it reads "Log in to see builds"), and the
 * server-rendered page and the live updates agree on every value.
 *
 * index.html stays a template with `{{HOST}}`, `{{SOURCE}}`, `{{RUNNING}}`,
 * `{{RECENT}}`, `{{ERRORS}}` and `{{STORAGE}}` placeholders: WEB_DIR is
 * documented as the directory of the start page, so an operator restyles or
 * rewrites the page in plain HTML without a build step. The file's own text
 * is trusted markup; the values put into it, and every value on the other
 * pages, are rendered with hono's `html` template, which does all escaping;
 * web/app.js only ever sets text (textContent), never markup. The pages also
 * carry a Content-Security-Policy that allows scripts from this server only.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { serveStatic } from '@hono/node-server/serve-static';
import type { Context, Env, Hono, Next } from 'hono';
import { html, raw } from 'hono/html';
import type { RecentError } from '../service/recent-errors.js';
import type { BuildsView, BuildView, ImageView, RegistryErrorBody } from './pages/api-types.js';
import { recentBuilds, runningBuilds, type Html } from './pages/builds.js';
import { apiImagePath, imagePath, splitImage } from './pages/format.js';
import { imagePage } from './pages/image.js';
import { errorPage } from './pages/layout.js';

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
   * `running` is shown only when the app has no /api/builds (404).
   */
  readonly live: (c: Context) => Promise<{ running: readonly RunningBuild[]; recentErrors: readonly RecentError[] } | undefined>;
  /** Storage in use and the last garbage-collection pass (figures only, no image names: shown to everyone). */
  readonly storage?: () => StorageSummary;
  /**
   * Where style.css and app.js are served from when webDir has none (the
   * image page needs them whatever WEB_DIR holds). Default: the web/
   * directory of this package.
   */
  readonly assetsDir?: string;
  /**
   * Answers a request to the JSON API. Default: the app these pages are
   * registered on, in process (`app.request`).
   */
  readonly api?: (req: Request) => Promise<Response>;
}

export interface StorageSummary {
  /** Blob bytes after the last pass; undefined before the first. */
  readonly bytes: number | undefined;
  /** Seconds between passes; undefined when no pass is scheduled. */
  readonly intervalSeconds: number | undefined;
  readonly lastPass: { readonly at: string; readonly imagesDropped: number; readonly blobsDeleted: number; readonly bytesDeleted: number } | undefined;
}

/** The bundled web/ directory: two levels above this file, in src/ and in dist/ alike. */
export const BUNDLED_WEB_DIR = path.resolve(import.meta.dirname, '../../web');

/** The files of the bundled web/ served when WEB_DIR has none of its own: what the pages link to. */
const ASSETS = ['/app.js', '/style.css'];

/** Scripts only from this server; inline styles stay allowed for WEB_DIR templates. */
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;

function storageSummary(s: StorageSummary | undefined): Html {
  if (s === undefined) return html``;
  const schedule =
    s.intervalSeconds === undefined ? html`No garbage collection is scheduled.` : html`Garbage collection runs every ${s.intervalSeconds} s.`;
  const last = s.lastPass
    ? html` Last pass at <time>${s.lastPass.at}</time>: ${s.lastPass.imagesDropped} images dropped, ${s.lastPass.blobsDeleted} blobs deleted (${mb(s.lastPass.bytesDeleted)}); ${mb(s.bytes ?? 0)} of blobs in storage.`
    : html` No pass has run yet.`;
  return html`<p class="storage">${schedule}${last}</p>`;
}

/** Running builds as the server knew them before /api/builds: no progress. */
function plainRunningList(builds: readonly RunningBuild[]): Html {
  if (builds.length === 0) return html`<ul class="running builds"></ul><p class="none">Nothing is being built right now.</p>`;
  return html`<ul class="running builds">${builds.map(
    (b) => html`<li class="build"><p class="what"><code>${b.image}</code> (${b.packages.join(', ')}), for ${Math.round(b.seconds)} s</p></li>`,
  )}</ul>`;
}

function errorList(errors: readonly RecentError[]): Html {
  if (errors.length === 0) return html`<p class="none">No failed builds since the server started.</p>`;
  return html`<ul class="errors">${errors.map(
    (e) => html`<li><time>${e.time}</time> <code>${e.image}</code>: ${e.message}${e.stderr ? html`<pre>${e.stderr}</pre>` : ''}</li>`,
  )}</ul>`;
}

const LOG_IN = html`<p class="none login">Log in to see builds. <a href="/login">Log in</a></p>`;

/** The template's text as trusted markup, each known `{{NAME}}` replaced by its (escaped) value. */
function fill(template: string, values: Record<string, unknown>): Html {
  const parts = template.split(/(\{\{[A-Z]+\}\})/).map((part, i) => {
    if (i % 2 === 0) return raw(part);
    const name = part.slice(2, -2);
    return Object.hasOwn(values, name) ? values[name] : raw(part);
  });
  return html`${parts}`;
}

/** The registry error's message, or a line naming the status. */
async function errorMessage(res: Response): Promise<string> {
  try {
    const body = (await res.json()) as RegistryErrorBody;
    const e = body.errors?.[0];
    if (e?.message) return e.code ? `${e.message} (${e.code})` : e.message;
  } catch {
    // Not JSON: the status says enough.
  }
  return `the server answered ${res.status}`;
}

type ApiAnswer<T> = { ok: true; value: T } | { ok: false; status: number; message: string; authenticate: string | null };

/** Meta-packages the composer offers, in the order they go at the front of a name. */
const META = ['arm64', 'nonroot', 'shell'] as const;

/**
 * A package attribute as a registry name component: lowercase (lookups
 * retry case-insensitively) and without the `_` nixpkgs puts before a
 * leading digit (`_7zip` is pulled as `7zip`). web/app.js does the same.
 */
export function attrToComponent(attr: string): string {
  return attr
    .split('.')
    .map((s) => s.replace(/^_(?=[0-9])/, ''))
    .join('.')
    .toLowerCase();
}

/** `/image?name=git htop&meta=shell` -> `shell/git/htop`; empty when nothing was asked for. */
export function composeName(name: string, metas: readonly string[]): string {
  const parts = name
    .split(/[\s,/]+/)
    .filter((p) => p !== '')
    .map(attrToComponent);
  const chosen = META.filter((m) => metas.includes(m) || parts.includes(m));
  return [...chosen, ...parts.filter((p) => !(META as readonly string[]).includes(p))].join('/');
}

export function registerStartPage<E extends Env>(app: Hono<E>, deps: StartPageDeps): void {
  const root = path.resolve(deps.webDir);
  const assets = path.resolve(deps.assetsDir ?? BUNDLED_WEB_DIR);
  const index = path.join(root, 'index.html');
  const dispatch = deps.api ?? ((req: Request) => Promise.resolve(app.request(req)));

  function host(c: Context): string {
    return c.req.header('host') ?? 'localhost';
  }

  /** The API's answer to this viewer, parsed; its error message otherwise. */
  async function api<T>(c: Context, p: string, method = 'GET'): Promise<ApiAnswer<T>> {
    const headers = new Headers({ accept: 'application/json' });
    const authorization = c.req.header('authorization');
    if (authorization !== undefined) headers.set('authorization', authorization);
    let res: Response;
    try {
      // The URL's host is only for the API's own links; `host` comes from the viewer's request.
      res = await dispatch(new Request(new URL(p, 'http://localhost'), { method, headers: { ...Object.fromEntries(headers), host: host(c) } }));
    } catch (e) {
      return { ok: false, status: 500, message: (e as Error).message, authenticate: null };
    }
    if (!res.ok) return { ok: false, status: res.status, message: await errorMessage(res), authenticate: res.headers.get('www-authenticate') };
    return { ok: true, value: (await res.json()) as T };
  }

  function pageHeaders(c: Context): void {
    c.header('Content-Security-Policy', CSP);
    c.header('X-Content-Type-Options', 'nosniff');
    c.header('Cache-Control', 'no-store');
  }

  async function startPage(c: Context, next: Next): Promise<Response | void> {
    // Read per view: an edit to WEB_DIR/index.html shows on the next reload.
    let template: string;
    try {
      template = await readFile(index, 'utf8');
    } catch {
      return next();
    }
    const [builds, live] = await Promise.all([api<BuildsView>(c, '/api/builds'), deps.live(c)]);
    let running: Html;
    let recent: Html;
    if (builds.ok) {
      running = runningBuilds(builds.value.running);
      recent = recentBuilds(builds.value.recent);
    } else if (builds.status === 401 || builds.status === 403) {
      running = recent = LOG_IN;
    } else if (builds.status === 404) {
      // An app without the API: what the service says, without progress.
      running = live ? plainRunningList(live.running) : LOG_IN;
      recent = html`<p class="none">Not available on this server.</p>`;
    } else {
      running = recent = html`<p class="none">Builds cannot be shown right now: ${builds.message}</p>`;
    }
    pageHeaders(c);
    return c.html(
      fill(template, {
        HOST: host(c),
        SOURCE: deps.source,
        RUNNING: running,
        RECENT: recent,
        ERRORS: live ? errorList(live.recentErrors) : LOG_IN,
        STORAGE: storageSummary(deps.storage?.()),
      }),
    );
  }

  /** A page for an API error; a 401 keeps the API's WWW-Authenticate, so the browser asks for credentials. */
  async function apiError(c: Context, e: { status: number; message: string; authenticate: string | null }, title: string): Promise<Response> {
    pageHeaders(c);
    if (e.status === 401 && e.authenticate) c.header('WWW-Authenticate', e.authenticate);
    const heading = e.status === 401 ? 'Log in to continue' : title;
    return c.html(errorPage(heading, e.message, html`<p><a href="/">Back to the start page</a></p>`), e.status as 400);
  }

  async function imageView(c: Context): Promise<Response> {
    const name = c.req.param('name') ?? '';
    const tag = c.req.query('tag') ?? 'latest';
    const view = await api<ImageView>(c, apiImagePath(name, tag));
    if (!view.ok) return apiError(c, view, 'No such image');
    let build: BuildView | undefined;
    let lastFailure: BuildView | undefined;
    if (!view.value.built || view.value.building !== undefined) {
      const builds = await api<BuildsView>(c, '/api/builds');
      if (builds.ok) {
        const v = view.value;
        build = builds.value.running.find((b) => b.id === v.building);
        const mine = (b: BuildView) => {
          const parts = splitImage(b.image);
          return parts !== undefined && parts.tag === v.tag && (parts.name === v.name || parts.name === v.canonicalName);
        };
        lastFailure = builds.value.recent.find((b) => mine(b));
        if (lastFailure?.state !== 'failed') lastFailure = undefined;
      }
    }
    pageHeaders(c);
    return c.html(imagePage({ view: view.value, host: host(c), ...(build ? { build } : {}), ...(lastFailure ? { lastFailure } : {}) }));
  }

  async function startBuild(c: Context): Promise<Response> {
    // A form on another site must not make a logged-in browser start builds.
    const site = c.req.header('sec-fetch-site');
    const origin = c.req.header('origin');
    if ((site !== undefined && site !== 'same-origin' && site !== 'none') || (origin !== undefined && origin !== 'null' && new URL(origin).host !== host(c))) {
      return apiError(c, { status: 403, message: 'builds are started from this server’s own pages only', authenticate: null }, 'Refused');
    }
    const name = c.req.param('name') ?? '';
    const tag = c.req.query('tag') ?? 'latest';
    const started = await api<{ id?: string; built?: boolean }>(c, apiImagePath(name, tag, '/build'), 'POST');
    if (!started.ok) return apiError(c, started, 'The build could not start');
    return c.redirect(imagePath(name, tag), 303);
  }

  /** The search form without JavaScript: `/image?name=git+htop&meta=shell` -> /image/shell/git/htop. */
  function composed(c: Context): Response {
    const name = composeName(c.req.query('name') ?? '', c.req.queries('meta') ?? []);
    const tag = c.req.query('tag');
    return c.redirect(name === '' ? '/' : imagePath(name, tag || 'latest'), 303);
  }

  /** Asks the browser for credentials when the API wants some; then back to `?next=` (a path here) or the start page. */
  async function login(c: Context): Promise<Response> {
    const probe = await api<unknown>(c, '/api/builds');
    if (!probe.ok && probe.status === 401) return apiError(c, probe, 'Log in');
    const next = c.req.query('next') ?? '/';
    // Only a path on this server: `//host` and `/\host` would leave it.
    return c.redirect(/^\/(?![/\\])/.test(next) ? next : '/', 303);
  }

  app.on(['GET', 'HEAD'], ['/', '/index.html'], startPage);
  app.on(['GET', 'HEAD'], ['/image', '/image/'], composed);
  app.on(['GET', 'HEAD'], '/image/:name{.+}', imageView);
  app.post('/image/:name{.+}/build', startBuild);
  app.get('/login', login);

  // serveStatic refuses `.`/`..` segments, doubled slashes, backslashes and
  // percent signs in the path; hidden files (`.git/`, `.htpasswd`) are not
  // served either. A file missing from WEB_DIR is looked up in the bundled
  // assets (style.css, app.js: never its index.html), so a WEB_DIR with
  // only index.html still has them.
  const files = serveStatic({ root });
  const bundled = assets === root ? undefined : serveStatic({ root: assets });
  const none = async () => {};
  app.on(['GET', 'HEAD'], '*', async (c, next) => {
    if (/(^|\/)\./.test(c.req.path)) return next();
    const served = (await files(c, none)) ?? (bundled && ASSETS.includes(c.req.path) ? await bundled(c, none) : undefined);
    return served ?? next();
  });
}
