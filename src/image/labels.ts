/**
 * What an image says about itself: OCI labels on the config (annotations on
 * the OCI manifest), and its default command. Pure.
 *
 * `created` is the fixed instant every config carries (manifest/build.ts),
 * so the labels change no digest from one build to the next; `source` is
 * the package set's public URL (never a local path: the caller passes
 * undefined for one); `title` is the image's canonical name, which every
 * spelling of the name shares.
 */
import { parseDrvName, storePathName } from '../layers/graph.js';
import { CREATED, Label } from '../manifest/build.js';

export interface LabelInput {
  readonly title: string;
  readonly revision: string;
  readonly sourceUrl: string | undefined;
  /** The requested packages: their names and store paths (for versions). */
  readonly packages: readonly { readonly name: string; readonly out: string }[];
}

export function imageLabels(input: LabelInput): Record<string, string> {
  const listed = [...input.packages]
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((p) => {
      const { version } = parseDrvName(storePathName(p.out));
      return version === '' ? p.name : `${p.name} ${version}`;
    });
  return {
    [Label.created]: CREATED,
    [Label.description]: `Nix packages: ${listed.join(', ')}`,
    [Label.revision]: input.revision,
    [Label.title]: input.title,
    ...(input.sourceUrl !== undefined ? { [Label.source]: input.sourceUrl } : {}),
  };
}

/**
 * The program an image of one package runs by default: `meta.mainProgram`
 * when the package set gives one, else the only program in its `bin/`, else
 * none. A name with a slash is not a program name and is ignored.
 */
export function mainProgram(meta: string | undefined, binPrograms: readonly string[]): string | undefined {
  if (meta !== undefined && meta !== '' && !meta.includes('/')) return meta;
  return binPrograms.length === 1 ? binPrograms[0] : undefined;
}
