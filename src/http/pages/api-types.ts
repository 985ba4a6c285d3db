/**
 * What the pages read from the JSON API under /api/ (src/http/api.ts), as it
 * travels on the wire. The pages call the API like any client does (same
 * authentication, same answers), so these are the documented shapes, not
 * the service's own types: the two sides are tied only by the contract.
 */

export type Phase = 'queued' | 'resolve' | 'realise' | 'closure' | 'group' | 'pack' | 'manifest' | 'done' | 'failed';
export type BuildState = 'queued' | 'running' | 'succeeded' | 'failed';

export interface Progress {
  readonly phase: Phase;
  readonly derivations?: { readonly done: number; readonly expected: number; readonly building?: string };
  readonly layers?: { readonly done: number; readonly total: number };
  /** Layer bytes written so far. */
  readonly bytes: number;
  /** The last few Nix log lines. */
  readonly log: readonly string[];
  /** 0..1 overall. */
  readonly fraction: number;
}

export interface BuildView {
  readonly id: string;
  /** `name:tag`, maybe followed by ` linux/arm64`. */
  readonly image: string;
  readonly packages: readonly string[];
  readonly state: BuildState;
  /** ISO 8601. */
  readonly startedAt: string;
  readonly seconds: number;
  readonly progress: Progress;
  readonly error?: string;
  readonly revision?: string;
  readonly layers?: number;
  readonly bytes?: number;
}

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
