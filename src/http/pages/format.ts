/**
 * Plain-text formatting shared by the server-rendered pages. web/app.js has
 * the same few functions for what it renders in the browser; keep the two
 * in step (the browser tests compare both renderings on the same page).
 */
import type { Phase } from './api-types.js';

/** Bytes in SI units with one decimal: `512 B`, `1.5 kB`, `12.3 MB`. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 1000) return `${Math.max(0, Math.round(n || 0))} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let v = n / 1000;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

/** Whole seconds: `7 s`; from two minutes on, `3 min 5 s`. */
export function formatSeconds(s: number): string {
  const t = Math.max(0, Math.round(s || 0));
  return t < 120 ? `${t} s` : `${Math.floor(t / 60)} min ${t % 60} s`;
}

export const PHASE_LABELS: Readonly<Record<Phase, string>> = {
  queued: 'waiting for a build slot',
  resolve: 'finding the packages',
  realise: 'building with Nix',
  closure: 'reading the closure',
  group: 'planning layers',
  pack: 'packing layers',
  manifest: 'writing the manifest',
  done: 'done',
  failed: 'failed',
};

export function phaseLabel(phase: string): string {
  return Object.hasOwn(PHASE_LABELS, phase) ? PHASE_LABELS[phase as Phase] : phase;
}

/**
 * A BuildView's `image` (`name:tag`, maybe followed by ` linux/arm64`) split
 * into its parts; undefined when it does not look like that.
 */
export function splitImage(image: string): { name: string; tag: string; platform: string | undefined } | undefined {
  const [ref, platform] = image.split(' ', 2);
  const colon = ref!.lastIndexOf(':');
  if (colon <= 0 || colon === ref!.length - 1) return undefined;
  return { name: ref!.slice(0, colon), tag: ref!.slice(colon + 1), platform };
}

/** The path of an image's page: each name component percent-encoded, the tag as `?tag=` unless it is `latest`. */
export function imagePath(name: string, tag = 'latest'): string {
  return `/image/${name.split('/').map(encodeURIComponent).join('/')}${tag === 'latest' ? '' : `?tag=${encodeURIComponent(tag)}`}`;
}

/** `/api/images/<name>` (+ `/build` with `suffix`) with the tag as a query parameter. */
export function apiImagePath(name: string, tag: string, suffix = ''): string {
  return `/api/images/${name.split('/').map(encodeURIComponent).join('/')}${suffix}?tag=${encodeURIComponent(tag)}`;
}

/** `/v2/<name>/<kind>/<digest>`, for links to raw manifests and blobs. */
export function registryPath(name: string, kind: 'manifests' | 'blobs', digest: string): string {
  return `/v2/${name.split('/').map(encodeURIComponent).join('/')}/${kind}/${encodeURIComponent(digest)}`;
}

/** `HH:MM:SS UTC` of an ISO time; the input itself when it does not parse. */
export function clockTime(iso: string): string {
  const t = Date.parse(iso);
  return Number.isNaN(t) ? iso : `${new Date(t).toISOString().slice(11, 19)} UTC`;
}
