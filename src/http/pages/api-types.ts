/**
 * What the pages read from the JSON API under /api/ (src/http/api.ts), as it
 * travels on the wire. The pages call the API like any client does (same
 * authentication, same answers), so these are the documented shapes, not
 * the service's own types, except a build's view, which the API sends
 * exactly as service/progress.ts defines it.
 */

import type { BuildView, ProgressPhase } from '../../service/progress.js';

// A build's view is what the API serialises: one definition (service/progress.ts).
export type { BuildView, Progress } from '../../service/progress.js';
export type Phase = ProgressPhase;
export type BuildState = BuildView['state'];

export interface BuildsView {
  readonly running: readonly BuildView[];
  /** Ended in the last 30 minutes, newest first. */
  readonly recent: readonly BuildView[];
}

export interface PlatformView {
  /** `linux/amd64` */
  readonly platform: string;
  readonly manifest: { readonly digest: string; readonly size: number };
  readonly dockerManifest: { readonly digest: string; readonly size: number };
  /** The config blob's digest. */
  readonly config: string;
  /** `description`, when present, says what a layer without store paths holds. */
  readonly layers: readonly { readonly digest: string; readonly size: number; readonly paths: readonly string[]; readonly description?: string }[];
  readonly totalBytes: number;
  readonly labels: Readonly<Record<string, string>>;
  readonly sbom?: { readonly artifact: string; readonly blob: string };
}

export interface ImageView {
  readonly name: string;
  readonly canonicalName: string;
  readonly tag: string;
  readonly built: boolean;
  /** The id of the build running for it now. */
  readonly building?: string;
  readonly platforms: readonly PlatformView[];
}

/** A registry error body, as every /v2 and /api error is answered. */
export interface RegistryErrorBody {
  readonly errors?: readonly { readonly code?: string; readonly message?: string; readonly detail?: unknown }[];
}
