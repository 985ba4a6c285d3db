/**
 * The image page, `/image/<name>?tag=`: what `/api/images/<name>` says about
 * an image, as HTML. Built: per platform, the manifest digests (OCI and
 * Docker, linking to the raw manifests), the config, the total size, the
 * SBOM, the labels and the layers table (digest, size, the store paths in
 * each). Not built: a Build button (a plain form; web/app.js takes it over
 * and shows the build live); while building: the build's progress, which
 * web/app.js follows over the build's event stream, and without JavaScript
 * the page reloads itself every 2 s until the layers are there.
 */
import { html } from 'hono/html';
import type { BuildView, ImageView, PlatformView } from './api-types.js';
import { buildOutcome, buildProgress, type Html } from './builds.js';
import { formatBytes, registryPath } from './format.js';
import { layout } from './layout.js';

export interface ImagePageInput {
  readonly view: ImageView;
  /** host[:port] as the browser reached the server, for the pull lines. */
  readonly host: string;
  /** The running build named by `view.building`, when the viewer may see it. */
  readonly build?: BuildView;
  /** The last failed build of this image, when it is recent and the viewer may see it. */
  readonly lastFailure?: BuildView;
}

/** The form's target: POST /image/<name>/build?tag=... */
export function buildFormAction(name: string, tag: string): string {
  return `/image/${name.split('/').map(encodeURIComponent).join('/')}/build?tag=${encodeURIComponent(tag)}`;
}

/** A store path without its hash: `htop-3.2.2` for `/nix/store/<hash>-htop-3.2.2` (names given without it stay). */
function pathName(p: string): string {
  const base = p.slice(p.lastIndexOf('/') + 1);
  return /^[0-9a-z]{32}-/.test(base) ? base.slice(33) : base;
}

function pathsCell(paths: readonly string[], description: string | undefined): Html {
  if (paths.length === 0) return html`<span class="none">${description ?? 'no store paths'}</span>`;
  const list = html`<ul class="paths">${paths.map((p) => html`<li><code title="${p}">${pathName(p)}</code></li>`)}</ul>`;
  return paths.length > 6 ? html`<details><summary>${paths.length} store paths</summary>${list}</details>` : list;
}

function digestLink(href: string, digest: string, cls: string): Html {
  return html`<a class="${cls}" href="${href}"><code class="digest">${digest}</code></a>`;
}

function platformSection(name: string, p: PlatformView): Html {
  const labels = Object.entries(p.labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return html`<section class="platform" data-platform="${p.platform}">
<h2>${p.platform}</h2>
<dl class="image-facts">
<dt>Size</dt><dd><data class="total" value="${String(p.totalBytes)}">${formatBytes(p.totalBytes)}</data> in ${p.layers.length} ${p.layers.length === 1 ? 'layer' : 'layers'}</dd>
<dt>OCI manifest</dt><dd>${digestLink(registryPath(name, 'manifests', p.manifest.digest), p.manifest.digest, 'manifest oci')} <span class="bytes">${p.manifest.size} bytes</span></dd>
<dt>Docker manifest</dt><dd>${digestLink(registryPath(name, 'manifests', p.dockerManifest.digest), p.dockerManifest.digest, 'manifest docker')} <span class="bytes">${p.dockerManifest.size} bytes</span></dd>
<dt>Config</dt><dd>${digestLink(registryPath(name, 'blobs', p.config), p.config, 'config')}</dd>
<dt>SBOM</dt><dd>${
    p.sbom
      ? html`<a class="sbom" href="${registryPath(name, 'blobs', p.sbom.blob)}">SPDX 2.3 JSON</a> (<a class="sbom-artifact" href="${registryPath(name, 'manifests', p.sbom.artifact)}">artifact manifest</a>)`
      : html`<span class="none">none</span>`
  }</dd>
</dl>
<table class="layers">
<caption>Layers, in the order the manifest lists them</caption>
<thead><tr><th scope="col">#</th><th scope="col">Digest</th><th scope="col">Size</th><th scope="col">Store paths</th></tr></thead>
<tbody>${p.layers.map(
    (l, i) => html`<tr class="layer">
<td class="index" data-label="Layer">${i + 1}</td>
<td class="digest-cell" data-label="Digest">${digestLink(registryPath(name, 'blobs', l.digest), l.digest, 'blob')}</td>
<td class="size-cell" data-label="Size"><data class="size" value="${String(l.size)}">${formatBytes(l.size)}</data></td>
<td class="paths-cell" data-label="Store paths">${pathsCell(l.paths, l.description)}</td>
</tr>`,
  )}</tbody>
</table>
<h3>Labels</h3>
${labels.length ? html`<dl class="labels">${labels.map(([k, v]) => html`<dt><code>${k}</code></dt><dd>${v}</dd>`)}</dl>` : html`<p class="none">No labels.</p>`}
</section>`;
}

function buildState(input: ImagePageInput): Html {
  const { view } = input;
  if (view.building !== undefined) {
    return html`<section class="build-state" aria-live="polite">
<h2>Building</h2>
<ul class="running builds">${input.build ? buildProgress(input.build) : ''}</ul>
${input.build ? '' : html`<p class="none">A build of this image is running.</p>`}
<noscript><p class="none">This page reloads every 2 seconds until the image is built.</p></noscript>
</section>`;
  }
  return html`<section class="build-state" aria-live="polite">
<h2>Not built yet</h2>
<p class="offer">The first pull builds it, or build it now:</p>
${
  input.lastFailure
    ? html`<div class="last-failure"><p>The last build of this image failed:</p><ul class="recent builds">${buildOutcome(input.lastFailure)}</ul></div>`
    : ''
}
<form class="build-form" method="post" action="${buildFormAction(view.name, view.tag)}"><button type="submit">Build</button> <span class="form-status" role="status"></span></form>
<ul class="running builds"></ul>
</section>`;
}

export function imagePage(input: ImagePageInput): Html {
  const { view, host } = input;
  const ref = `${host}/${view.name}${view.tag === 'latest' ? '' : `:${view.tag}`}`;
  const built = view.built && view.platforms.length > 0;
  return layout({
    title: `${view.name}:${view.tag} · nixery-ts`,
    head: view.building !== undefined && !built ? html`<noscript><meta http-equiv="refresh" content="2"></noscript>` : html``,
    main: html`<main id="image" data-name="${view.name}" data-tag="${view.tag}" data-build-id="${view.building ?? ''}" data-built="${built ? 'true' : 'false'}">
<h1><code class="name">${view.name}</code><span class="tag">:${view.tag}</span></h1>
${view.canonicalName !== view.name ? html`<p class="canonical">Canonical name: <code>${view.canonicalName}</code></p>` : ''}
<pre class="pull"><code>docker pull ${ref}
docker run --rm -it ${ref}</code></pre>
${built ? html`<p class="summary">Built for ${view.platforms.map((p) => p.platform).join(', ')}.</p>${view.platforms.map((p) => platformSection(view.name, p))}` : buildState(input)}
</main>`,
  });
}
