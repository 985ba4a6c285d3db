/**
 * Builds as HTML: a running build with its progress (phase, derivations,
 * layers, bytes, the last log lines) and a finished one with its outcome.
 * The start page and the image page render these on the server; web/app.js
 * renders the same markup (same elements and classes) from the API's
 * answers and keeps it up to date, so the page reads the same with and
 * without JavaScript. Every value goes through hono's `html`, which escapes.
 */
import { html } from 'hono/html';
import type { BuildView } from './api-types.js';
import { clockTime, formatBytes, formatSeconds, imagePath, phaseLabel, splitImage } from './format.js';

export type Html = ReturnType<typeof html>;

/** The image as a link to its page (when its name parses), in <code>. */
function imageLink(image: string): Html {
  const parts = splitImage(image);
  return parts ? html`<a href="${imagePath(parts.name, parts.tag)}"><code>${image}</code></a>` : html`<code>${image}</code>`;
}

function percent(fraction: number): string {
  return `${Math.round(Math.min(1, Math.max(0, fraction || 0)) * 100)}%`;
}

function derivationsText(b: BuildView): string {
  const d = b.progress.derivations;
  if (!d) return '';
  return `derivations ${d.done} of ${d.expected} built${d.building ? `, building ${d.building}` : ''}`;
}

function layersText(b: BuildView): string {
  const l = b.progress.layers;
  return l ? `${l.done} of ${l.total} layers written` : '';
}

/** One build in progress (also a finished one, on the image page while it shows the outcome). */
export function buildProgress(b: BuildView): Html {
  const p = b.progress;
  const derivations = derivationsText(b);
  const layers = layersText(b);
  const bytes = p.bytes > 0 ? `${formatBytes(p.bytes)} written` : '';
  return html`<li class="build" data-build-id="${b.id}" data-state="${b.state}">
<p class="what">${imageLink(b.image)} (${b.packages.join(', ')}), for <span class="elapsed">${formatSeconds(b.seconds)}</span></p>
<div class="progress"><progress max="1" value="${String(Math.min(1, Math.max(0, p.fraction || 0)))}">${percent(p.fraction)}</progress>
<span class="phase" data-phase="${p.phase}">${phaseLabel(p.phase)}</span> <span class="percent">${percent(p.fraction)}</span></div>
<p class="counts"><span class="derivations"${derivations ? '' : ' hidden'}>${derivations}</span> <span class="layers"${layers ? '' : ' hidden'}>${layers}</span> <span class="bytes"${bytes ? '' : ' hidden'}>${bytes}</span></p>
<p class="error"${b.error ? '' : ' hidden'}>${b.error ?? ''}</p>
<pre class="log"${p.log.length ? '' : ' hidden'}>${p.log.join('\n')}</pre>
</li>`;
}

/** One finished build: outcome, duration, layers, bytes; the error and last log lines if it failed. */
export function buildOutcome(b: BuildView): Html {
  const failed = b.state === 'failed';
  const facts = [
    `in ${formatSeconds(b.seconds)}`,
    ...(b.layers !== undefined ? [`${b.layers} ${b.layers === 1 ? 'layer' : 'layers'}`] : []),
    ...(b.bytes !== undefined ? [formatBytes(b.bytes)] : []),
  ].join(', ');
  return html`<li class="build" data-build-id="${b.id}" data-state="${b.state}">
<p class="what">${imageLink(b.image)} <span class="outcome">${b.state}</span> <span class="facts">${facts}</span> <time class="when" datetime="${b.startedAt}">${clockTime(b.startedAt)}</time></p>
${failed && b.error ? html`<p class="error">${b.error}</p>` : ''}${failed && b.progress.log.length ? html`<pre class="log">${b.progress.log.join('\n')}</pre>` : ''}
</li>`;
}

export function runningBuilds(builds: readonly BuildView[]): Html {
  return html`<ul class="running builds" data-list="running">${builds.map(buildProgress)}</ul><p class="none"${builds.length ? ' hidden' : ''}>Nothing is being built right now.</p>`;
}

export function recentBuilds(builds: readonly BuildView[]): Html {
  return html`<ul class="recent builds" data-list="recent">${builds.map(buildOutcome)}</ul><p class="none"${builds.length ? ' hidden' : ''}>No builds ended in the last 30 minutes.</p>`;
}
