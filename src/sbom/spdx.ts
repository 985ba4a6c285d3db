/**
 * An SPDX 2.3 SBOM (JSON) for one image of one platform, from its runtime
 * closure graph and the requested packages' meta. Pure: the same input gives
 * the same bytes, which is what lets the document be content-addressed and
 * served as a referrer of the image like any other blob.
 *
 * The document:
 * - one package for the image itself (SPDXRef-Image, primaryPackagePurpose
 *   CONTAINER, versionInfo = the package set revision), which the document
 *   DESCRIBES and which CONTAINS each requested package;
 * - one package per store path of the closure, SPDXRef-<store hash>-<name>,
 *   named and versioned as Nix splits the name (parseDrvName); each store
 *   path DEPENDS_ON each of its run-time references (the graph's edges);
 * - the store path itself as an external reference of category OTHER and
 *   type `nix-store-path`: that is machine-readable, survives tools that drop
 *   comments, and fits the schema (a locator with no spaces). Not
 *   packageFileName, which SPDX defines as a file's base name, nor a
 *   checksum: SPDX checksums are hex digests of named algorithms and the
 *   store hash is a truncated nix-base32 digest of something else, so it is
 *   named in the package comment instead;
 * - licenseDeclared, homepage and description only for the requested
 *   packages (from the package set's meta; the rest of the closure has none
 *   here), licenseDeclared only when meta.license is an SPDX expression over
 *   listed license ids (spdx-expression-parse), else NOASSERTION with the
 *   text as the package set gives it in licenseComments (nixpkgs' licenses
 *   without an spdxId, like "unfreeRedistributable", are not SPDX ids).
 *   LicenseRef-/DocumentRef- ids are refused as well: they would need
 *   hasExtractedLicensingInfos / externalDocumentRefs entries.
 */
import { createHash } from 'node:crypto';
import parseSpdxExpression from 'spdx-expression-parse';
import { parseDrvName, storePathHash, storePathName, type ClosureGraph } from '../layers/graph.js';
import type { PackageMeta } from '../nix/runner.js';

export const SPDX_MEDIA_TYPE = 'application/spdx+json';

/**
 * Creation time of every document: the project's fixed image creation time
 * (1 s after the epoch, as in the image configs), so that the same image
 * always gives the same SBOM bytes. The build time is not part of what an
 * image is; the package set revision is, and it is named in the document.
 */
export const SPDX_CREATED = '1970-01-01T00:00:01Z';

export interface SbomPackage {
  /** The name as requested. */
  readonly name: string;
  /** The attribute path it resolved to. */
  readonly attr: string;
  /** Its output path: a root of the closure graph. */
  readonly out: string;
  readonly meta?: PackageMeta;
}

export interface SbomInput {
  /** Canonical image name, e.g. "shell/htop" or "hello". */
  readonly imageName: string;
  readonly architecture: 'amd64' | 'arm64';
  /** Package set revision (git commit, channel commit, or a path-content hash). */
  readonly revision: string;
  /**
   * Where the package set comes from as the server describes it (a URL, or
   * e.g. "local package set"). Never a filesystem path of the server: the
   * caller passes a string that is safe to publish.
   */
  readonly source: string;
  /** The runtime closure (roots = the requested packages' out paths). */
  readonly graph: ClosureGraph;
  /** The requested packages. */
  readonly packages: readonly SbomPackage[];
}

const NOASSERTION = 'NOASSERTION';
const IMAGE_ID = 'SPDXRef-Image';
const NAMESPACE_BASE = 'https://nixery-ts.invalid/spdx';

interface SpdxExternalRef {
  referenceCategory: 'OTHER';
  referenceType: string;
  referenceLocator: string;
}

interface SpdxPackage {
  SPDXID: string;
  name: string;
  versionInfo?: string;
  downloadLocation: string;
  filesAnalyzed: false;
  homepage?: string;
  sourceInfo?: string;
  licenseConcluded: string;
  licenseDeclared: string;
  licenseComments?: string;
  copyrightText: string;
  description?: string;
  comment?: string;
  externalRefs?: SpdxExternalRef[];
  primaryPackagePurpose?: 'CONTAINER';
}

interface SpdxRelationship {
  spdxElementId: string;
  relationshipType: 'DESCRIBES' | 'CONTAINS' | 'DEPENDS_ON';
  relatedSpdxElement: string;
}

/** `SPDXRef-<hash>-<name>`: SPDX ids allow only letters, digits, `.` and `-`. */
export function spdxIdOf(storePath: string): string {
  return `SPDXRef-${storePathHash(storePath)}-${storePathName(storePath).replace(/[^A-Za-z0-9.-]/g, '-')}`;
}

type SpdxInfo = parseSpdxExpression.Info;

/** Renders a parsed expression: upper-case operators, parentheses only where OR sits under AND. */
function renderExpression(info: SpdxInfo, parent?: 'and' | 'or'): string {
  if ('conjunction' in info) {
    const s = `${renderExpression(info.left, info.conjunction)} ${info.conjunction.toUpperCase()} ${renderExpression(info.right, info.conjunction)}`;
    return parent === 'and' && info.conjunction === 'or' ? `(${s})` : s;
  }
  return `${info.license}${info.plus ? '+' : ''}${info.exception ? ` WITH ${info.exception}` : ''}`;
}

function refIds(info: SpdxInfo): string[] {
  return 'conjunction' in info ? [...refIds(info.left), ...refIds(info.right)] : [info.license];
}

/**
 * The license text of a package set as an SPDX license expression over the
 * SPDX license list, in canonical form; undefined when it is not one.
 */
export function spdxLicenseExpression(text: string): string | undefined {
  let info: SpdxInfo;
  try {
    info = parseSpdxExpression(text);
  } catch {
    return undefined;
  }
  if (refIds(info).some((id) => /^(LicenseRef-|DocumentRef-)/.test(id))) return undefined;
  return renderExpression(info);
}

const compare = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

export function buildSpdx(input: SbomInput): Buffer {
  const { graph } = input;

  // Requested packages by out path (two names may resolve to the same path:
  // bash and bashInteractive); the first by attribute with meta supplies it.
  const requested = new Map<string, SbomPackage[]>();
  for (const p of [...input.packages].sort((a, b) => compare(a.attr, b.attr) || compare(a.name, b.name))) {
    if (!graph.nodes.has(p.out)) throw new Error(`sbom: requested package ${p.name} (${p.out}) is not in the closure`);
    requested.set(p.out, [...(requested.get(p.out) ?? []), p]);
  }
  for (const root of graph.roots) {
    if (!requested.has(root)) throw new Error(`sbom: closure root ${root} is not a requested package`);
  }

  const paths = [...graph.nodes.keys()].sort(compare);
  const packages: SpdxPackage[] = [
    {
      SPDXID: IMAGE_ID,
      name: input.imageName,
      ...(input.revision ? { versionInfo: input.revision } : {}),
      downloadLocation: NOASSERTION,
      filesAnalyzed: false,
      licenseConcluded: NOASSERTION,
      licenseDeclared: NOASSERTION,
      copyrightText: NOASSERTION,
      comment: `Container image ${input.imageName} for linux/${input.architecture}, built by nixery-ts; package set: ${input.source}, revision ${input.revision}.`,
      primaryPackagePurpose: 'CONTAINER',
    },
  ];
  for (const path of paths) packages.push(storePathPackage(path, graph.nodes.get(path)!.narSize, requested.get(path)));

  const relationships: SpdxRelationship[] = [
    { spdxElementId: 'SPDXRef-DOCUMENT', relationshipType: 'DESCRIBES', relatedSpdxElement: IMAGE_ID },
  ];
  for (const root of graph.roots) {
    relationships.push({ spdxElementId: IMAGE_ID, relationshipType: 'CONTAINS', relatedSpdxElement: spdxIdOf(root) });
  }
  for (const path of paths) {
    for (const ref of graph.nodes.get(path)!.references) {
      relationships.push({ spdxElementId: spdxIdOf(path), relationshipType: 'DEPENDS_ON', relatedSpdxElement: spdxIdOf(ref) });
    }
  }
  relationships.sort(
    (a, b) =>
      compare(a.spdxElementId, b.spdxElementId) ||
      compare(a.relationshipType, b.relationshipType) ||
      compare(a.relatedSpdxElement, b.relatedSpdxElement),
  );

  const name = `${input.imageName} (linux/${input.architecture})`;
  const creationInfo = {
    created: SPDX_CREATED,
    creators: ['Tool: nixery-ts'],
    comment:
      `Supplier context: package set ${input.source}, revision ${input.revision}. ` +
      `Each package is a store path of the image's runtime closure, built by Nix from that package set; ` +
      `license, homepage and description come from the package set's meta, for the requested packages only.`,
  };
  const body = { creationInfo, packages, relationships };
  // The namespace names the content: a hash of everything else in the document.
  const digest = createHash('sha256')
    .update(JSON.stringify({ name, imageName: input.imageName, architecture: input.architecture, ...body }))
    .digest('hex');
  const namespacePath = input.imageName.split('/').map(encodeURIComponent).join('/');
  const doc = {
    spdxVersion: 'SPDX-2.3',
    dataLicense: 'CC0-1.0',
    SPDXID: 'SPDXRef-DOCUMENT',
    name,
    documentNamespace: `${NAMESPACE_BASE}/${namespacePath}/${input.architecture}-${digest}`,
    ...body,
  };
  return Buffer.from(`${JSON.stringify(doc, null, 2)}\n`, 'utf8');
}

function storePathPackage(path: string, narSize: number, requestedAs: readonly SbomPackage[] | undefined): SpdxPackage {
  const { name, version } = parseDrvName(storePathName(path));
  const meta = requestedAs?.find((p) => p.meta)?.meta;
  const license = meta?.license ? spdxLicenseExpression(meta.license) : undefined;
  const homepage = meta?.homepage && /^https?:\/\/\S+$/.test(meta.homepage) ? meta.homepage : undefined;
  return {
    SPDXID: spdxIdOf(path),
    name,
    ...(version ? { versionInfo: version } : {}),
    downloadLocation: NOASSERTION,
    filesAnalyzed: false,
    ...(homepage ? { homepage } : {}),
    ...(requestedAs
      ? { sourceInfo: `Requested as ${requestedAs.map((p) => `"${p.name}" (attribute ${p.attr})`).join(', ')} from the package set.` }
      : {}),
    licenseConcluded: NOASSERTION,
    licenseDeclared: license ?? NOASSERTION,
    ...(meta?.license && !license
      ? { licenseComments: `The package set declares the license "${meta.license}", which is not an SPDX license expression.` }
      : {}),
    copyrightText: NOASSERTION,
    ...(meta?.description ? { description: meta.description } : {}),
    comment: `Nix store path hash (nix base32): ${storePathHash(path)}; NAR size: ${narSize} bytes.`,
    externalRefs: [{ referenceCategory: 'OTHER', referenceType: 'nix-store-path', referenceLocator: path }],
  };
}
