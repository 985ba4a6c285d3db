/**
 * The Kubernetes manifests under deploy/kubernetes: every YAML parses, the
 * kustomizations name files that exist, and the Deployments agree with the
 * server (probe paths, ports and schemes, shutdown grace, admission limits,
 * storage configuration) and with the Service and the nodes' containerd
 * configuration. The auth overlays (a variant plus the auth Component) are
 * rendered here the way kustomize renders them, for the patches they use, and
 * checked as a whole: Secrets mounted so that their updates arrive, variables
 * pointing at the mounted files, probes over HTTPS.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';

const ROOT = path.resolve(import.meta.dirname, '../..');
const K8S = path.join(ROOT, 'deploy/kubernetes');

// Just the fields the checks read.
interface EnvVar {
  name: string;
  value?: string;
}
interface Probe {
  httpGet?: { path: string; port: number | string; scheme?: string; httpHeaders?: { name: string; value: string }[] };
}
interface Container {
  name: string;
  image: string;
  ports?: { name?: string; containerPort: number }[];
  env?: EnvVar[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  lifecycle?: { preStop?: { exec?: { command: string[] }; sleep?: { seconds: number } } };
  securityContext?: {
    runAsUser?: number;
    runAsNonRoot?: boolean;
    privileged?: boolean;
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    capabilities?: { drop?: string[]; add?: string[] };
  };
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  volumeMounts?: { name: string; mountPath: string; subPath?: string; readOnly?: boolean }[];
}
interface Volume {
  name: string;
  emptyDir?: { sizeLimit?: string; medium?: string };
  persistentVolumeClaim?: { claimName: string };
  secret?: { secretName: string; defaultMode?: number; items?: { key: string; path: string }[] };
}
interface Deployment {
  kind: 'Deployment';
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec: {
    replicas?: number;
    selector: { matchLabels: Record<string, string> };
    strategy?: { type?: string; rollingUpdate?: { maxUnavailable?: number | string; maxSurge?: number | string } };
    template: {
      metadata: { labels: Record<string, string> };
      spec: {
        terminationGracePeriodSeconds?: number;
        automountServiceAccountToken?: boolean;
        enableServiceLinks?: boolean;
        securityContext?: { seccompProfile?: { type: string } };
        containers: Container[];
        volumes?: Volume[];
      };
    };
  };
}
interface Service {
  kind: 'Service';
  metadata: { name: string; namespace?: string };
  spec: { type?: string; clusterIP?: string; selector: Record<string, string>; ports: { name?: string; port: number; targetPort?: number | string }[] };
}
/** A kustomize patch: a file or inline text; a strategic merge, or JSON 6902 operations with a target. */
interface Patch {
  path?: string;
  patch?: string;
  target?: { kind?: string; name?: string };
}
interface Kustomization {
  kind: 'Kustomization';
  resources?: string[];
  components?: string[];
  patches?: Patch[];
  images?: { name: string; newName?: string; newTag?: string }[];
}
interface Component {
  kind: 'Component';
  resources?: string[];
  patches?: Patch[];
}
type Doc = { kind?: string; apiVersion?: string; metadata?: { name?: string; namespace?: string } } & Record<string, unknown>;

function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? yamlFiles(path.join(dir, e.name)) : /\.ya?ml$/.test(e.name) ? [path.join(dir, e.name)] : []))
    .sort();
}

const files = yamlFiles(K8S);
const docs = new Map<string, Doc[]>(
  files.map((f) => {
    const parsed = parseAllDocuments(readFileSync(f, 'utf8'));
    const list = Array.isArray(parsed) ? parsed : [parsed];
    for (const d of list) {
      if (d.errors.length > 0) throw new Error(`${path.relative(ROOT, f)}: ${d.errors.map((e) => e.message).join('; ')}`);
    }
    return [path.relative(K8S, f), list.map((d) => d.toJS() as Doc).filter((d) => d !== null)];
  }),
);
const all = [...docs.entries()].flatMap(([file, ds]) => ds.map((doc) => ({ file, doc })));
const deployments = all.filter((d) => d.doc.kind === 'Deployment') as { file: string; doc: Deployment & Doc }[];
const services = all.filter((d) => d.doc.kind === 'Service') as { file: string; doc: Service & Doc }[];
const kustomizations = all.filter((d) => d.doc.kind === 'Kustomization') as { file: string; doc: Kustomization & Doc }[];
const components = all.filter((d) => d.doc.kind === 'Component') as { file: string; doc: Component & Doc }[];

function deploymentIn(dir: string): Deployment {
  const d = deployments.find((x) => path.dirname(x.file) === dir);
  if (!d) throw new Error(`no Deployment in deploy/kubernetes/${dir}`);
  return d.doc;
}
const container = (d: Deployment): Container => {
  const c = d.spec.template.spec.containers.find((x) => x.name === 'nixery');
  if (!c) throw new Error(`${d.metadata.name}: no container named nixery`);
  return c;
};
const envOf = (c: Container) => new Map((c.env ?? []).map((e) => [e.name, e.value]));

/** The container port a probe or Service targets, by number or by name. */
function portNumber(c: Container, port: number | string | undefined): number | undefined {
  if (typeof port === 'number') return port;
  return c.ports?.find((p) => p.name === port)?.containerPort;
}

// ------------------------------------------------ rendering like kustomize

const isMap = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Keys that identify an item of the lists the patches here touch (Kubernetes'
 * list-map keys, which kustomize's strategic merge uses); other lists are
 * replaced whole. `ports` is a container's: kustomize matches on containerPort
 * and protocol, so a patch that renames a port must name its protocol too.
 */
const LIST_KEYS: Record<string, string[]> = {
  containers: ['name'],
  env: ['name'],
  ports: ['containerPort', 'protocol'],
  volumeMounts: ['mountPath'],
  volumes: ['name'],
};

function strategicMerge(base: unknown, patch: unknown, field = ''): unknown {
  if (isMap(patch)) {
    const out: Record<string, unknown> = isMap(base) ? { ...base } : {};
    for (const [k, v] of Object.entries(patch)) {
      if (v === null) delete out[k];
      else out[k] = strategicMerge(out[k], v, k);
    }
    return out;
  }
  const keys = LIST_KEYS[field];
  if (keys && Array.isArray(base) && Array.isArray(patch)) {
    const out = [...base];
    for (const item of patch) {
      const i = out.findIndex((x) => isMap(x) && isMap(item) && keys.every((k) => x[k] === item[k]));
      if (i >= 0) out[i] = strategicMerge(out[i], item);
      else out.push(item);
    }
    return out;
  }
  return patch;
}

/** JSON 6902 `add` and `replace`, the operations used here. */
function jsonPatch(doc: Doc, ops: { op: string; path: string; value?: unknown }[]): Doc {
  const out = structuredClone(doc);
  for (const { op, path: pointer, value } of ops) {
    if (op !== 'add' && op !== 'replace') throw new Error(`JSON patch operation ${op}: not rendered by this test`);
    const parts = pointer.split('/').slice(1).map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~'));
    const last = parts.pop()!;
    let parent: unknown = out;
    for (const p of parts) parent = Array.isArray(parent) ? parent[Number(p)] : isMap(parent) ? parent[p] : undefined;
    if (Array.isArray(parent)) {
      const i = last === '-' ? parent.length : Number(last);
      if (op === 'add') parent.splice(i, 0, value);
      else if (i < parent.length) parent[i] = value;
      else throw new Error(`${pointer}: no such item`);
    } else if (isMap(parent)) {
      if (op === 'replace' && !(last in parent)) throw new Error(`${pointer}: nothing to replace`);
      parent[last] = value;
    } else {
      throw new Error(`${pointer}: no such path`);
    }
  }
  return out;
}

function applyPatches(resources: Doc[], dir: string, patches: Patch[]): Doc[] {
  return patches.reduce((res, p) => {
    const body: unknown = p.path !== undefined ? docs.get(path.join(dir, p.path))?.[0] : parse(p.patch ?? '');
    if (body === undefined || body === null) throw new Error(`${dir}: patch ${p.path ?? p.patch} is empty or missing`);
    const target = p.target ?? { kind: (body as Doc).kind, name: (body as Doc).metadata?.name };
    const matches = (d: Doc) => d.kind === target.kind && (target.name === undefined || d.metadata?.name === target.name);
    if (!res.some(matches)) throw new Error(`${dir}: patch ${p.path ?? ''} matches no ${target.kind} ${target.name ?? ''}`);
    return res.map((d) => (!matches(d) ? d : Array.isArray(body) ? jsonPatch(d, body as { op: string; path: string }[]) : (strategicMerge(d, body) as Doc)));
  }, resources);
}

/** What `kustomize build deploy/kubernetes/<dir>` gives, for the features these kustomizations use. */
function render(dir: string): Doc[] {
  const k = docs.get(path.join(dir, 'kustomization.yaml'))?.[0] as (Kustomization & Doc) | undefined;
  if (k?.kind !== 'Kustomization' && k?.kind !== 'Component') throw new Error(`no kustomization in deploy/kubernetes/${dir}`);
  let out = (k.resources ?? []).flatMap((r) => {
    const rel = path.join(dir, r);
    return statSync(path.join(K8S, rel)).isDirectory() ? render(rel) : (docs.get(rel) ?? []);
  });
  for (const c of k.components ?? []) {
    const cdir = path.join(dir, c);
    const comp = docs.get(path.join(cdir, 'kustomization.yaml'))?.[0] as (Component & Doc) | undefined;
    if (comp?.kind !== 'Component') throw new Error(`${dir}: ${c} is not a kustomize Component`);
    out = [...out, ...(comp.resources ?? []).flatMap((r) => docs.get(path.join(cdir, r)) ?? [])];
    out = applyPatches(out, cdir, comp.patches ?? []);
  }
  return applyPatches(out, dir, k.patches ?? []);
}

function renderedDeployment(dir: string): Deployment {
  const found = render(dir).filter((d) => d.kind === 'Deployment');
  expect(found, `${dir}: Deployments`).toHaveLength(1);
  return found[0] as unknown as Deployment;
}
function renderedService(dir: string): Service {
  const found = render(dir).filter((d) => d.kind === 'Service');
  expect(found, `${dir}: Services`).toHaveLength(1);
  return found[0] as unknown as Service;
}

// ------------------------------------------------ shared checks

/** The server's admission variables and the ranges it accepts (src/config.ts). */
const ADMISSION: Record<string, [number, number]> = {
  NIXERY_MAX_BUILDS: [1, 1024],
  NIXERY_MAX_QUEUED_BUILDS: [0, 100_000],
  NIXERY_MAX_PACKAGES: [1, 10_000],
  NIXERY_FAILED_BUILD_TTL: [0, 24 * 3600],
};

/** Probes hit /readyz and /livez on the container port, over HTTPS exactly when the server serves TLS, without credentials. */
function expectProbes(c: Container): void {
  const env = envOf(c);
  const scheme = env.has('NIXERY_TLS_CERT') ? 'HTTPS' : 'HTTP';
  for (const [name, probe, probePath] of [
    ['readinessProbe', c.readinessProbe, '/readyz'],
    ['livenessProbe', c.livenessProbe, '/livez'],
  ] as const) {
    expect(probe?.httpGet?.path, name).toBe(probePath);
    expect(portNumber(c, probe?.httpGet?.port), name).toBe(8080);
    expect(probe?.httpGet?.scheme ?? 'HTTP', `${name}.scheme`).toBe(scheme);
    // /livez and /readyz are open under every NIXERY_ANONYMOUS policy.
    expect(probe?.httpGet?.httpHeaders ?? [], `${name}: headers`).toEqual([]);
  }
}

/**
 * `file` (an environment variable's value) is the `key` of Secret
 * `secretName`, in a volume mounted read-only as a directory: a subPath
 * mount would never see the Secret's updates.
 */
function expectSecretFile(d: Deployment, variable: string, secretName: string, key: string): void {
  const c = container(d);
  const file = envOf(c).get(variable);
  expect(file, variable).toMatch(/^\/./);
  const mounts = c.volumeMounts ?? [];
  expect(
    mounts.filter((m) => m.mountPath === file),
    `${variable}: nothing mounted at ${file} itself (subPath)`,
  ).toEqual([]);
  const mount = mounts.find((m) => m.mountPath === path.dirname(file!));
  expect(mount, `${variable}: a volumeMount at ${path.dirname(file!)}`).toBeDefined();
  expect(mount!.subPath, `${variable}: subPath`).toBeUndefined();
  expect(mount!.readOnly, `${variable}: readOnly`).toBe(true);
  const volume = d.spec.template.spec.volumes?.find((v) => v.name === mount!.name);
  expect(volume?.secret?.secretName, `${variable}: the Secret`).toBe(secretName);
  const items = volume!.secret!.items;
  const fileInVolume = path.basename(file!);
  if (items) expect(items.find((i) => i.path === fileInVolume)?.key, `${variable}: the Secret key projected as ${fileInVolume}`).toBe(key);
  else expect(fileInVolume, `${variable}: the Secret key`).toBe(key);
}

/** Quantities like 512Mi, 2Gi, 1, 500m as numbers (bytes or cores). */
function quantity(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(q);
  if (!m) throw new Error(`bad quantity ${q}`);
  const units: Record<string, number> = { m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40 };
  return Number(m[1]) * (m[2] ? units[m[2]]! : 1);
}

describe('deploy/kubernetes', () => {
  it('has YAML that parses, with no namespace written into it', () => {
    expect(files.length).toBeGreaterThanOrEqual(7);
    for (const { file, doc } of all) {
      expect(doc.kind, `${file}: kind`).toEqual(expect.any(String));
      expect(doc.apiVersion, `${file}: apiVersion`).toEqual(expect.any(String));
      expect(doc.metadata?.namespace, `${file}: namespace`).toBeUndefined();
      expect(doc['namespace'], `${file}: namespace`).toBeUndefined();
    }
  });

  it('has kustomizations whose resources exist, and a filesystem and a gcs variant', () => {
    for (const { file, doc } of [...kustomizations, ...components]) {
      for (const c of (doc as Kustomization).components ?? []) {
        expect(docs.get(path.join(path.dirname(file), c, 'kustomization.yaml'))?.[0]?.kind, `${file}: component ${c}`).toBe('Component');
      }
      for (const p of doc.patches ?? []) {
        if (p.path !== undefined) expect(docs.has(path.join(path.dirname(file), p.path)), `${file}: patch ${p.path}`).toBe(true);
        else expect(p.target?.kind, `${file}: an inline patch names its target`).toEqual(expect.any(String));
      }
      for (const r of doc.resources ?? []) {
        const p = path.join(K8S, path.dirname(file), r);
        expect(statSync(p, { throwIfNoEntry: false }), `${file}: ${r}`).toBeDefined();
        if (statSync(p).isDirectory()) expect(statSync(path.join(p, 'kustomization.yaml'), { throwIfNoEntry: false }), `${file}: ${r}/kustomization.yaml`).toBeDefined();
      }
    }
    for (const variant of ['filesystem', 'gcs']) {
      const k = kustomizations.find((x) => x.file === `${variant}/kustomization.yaml`)?.doc;
      expect(k, variant).toBeDefined();
      expect(k!.resources).toEqual(expect.arrayContaining(['../base', 'deployment.yaml']));
      // The image transformer must name the image the Deployment uses.
      expect(k!.images?.map((i) => i.name)).toContain(container(deploymentIn(variant)).image);
    }
  });

  describe.each(['filesystem', 'gcs'])('the %s Deployment', (variant) => {
    const d = deploymentIn(variant);
    const c = container(d);
    const env = envOf(c);
    const pod = d.spec.template.spec;

    it('serves on the port the server is told to use', () => {
      expect(c.ports).toEqual([{ name: 'http', containerPort: 8080, protocol: 'TCP' }]);
      expect(env.get('PORT')).toBe('8080');
      const sources = ['NIXERY_CHANNEL', 'NIXERY_PKGS_REPO', 'NIXERY_PKGS_PATH'].filter((v) => env.has(v));
      expect(sources).toHaveLength(1);
    });

    it('probes /readyz for readiness and /livez for liveness on the container port', () => {
      expect(c.readinessProbe?.httpGet?.path).toBe('/readyz');
      expect(c.livenessProbe?.httpGet?.path).toBe('/livez');
      expect(portNumber(c, c.readinessProbe?.httpGet?.port)).toBe(8080);
      expect(portNumber(c, c.livenessProbe?.httpGet?.port)).toBe(8080);
      // Plain HTTP here: TLS comes with the auth overlays.
      expectProbes(c);
    });

    it('sets the admission limits explicitly, within what the server accepts and the memory limit allows', () => {
      for (const [name, [min, max]] of Object.entries(ADMISSION)) {
        const value = env.get(name);
        expect(value, name).toMatch(/^\d+$/);
        expect(Number(value), name).toBeGreaterThanOrEqual(min);
        expect(Number(value), name).toBeLessThanOrEqual(max);
      }
      // A Nix evaluation of nixpkgs takes up to 2 GiB.
      expect(quantity(c.resources!.limits!.memory!)).toBeGreaterThanOrEqual(Number(env.get('NIXERY_MAX_BUILDS')) * 2 ** 31);
      // Without htpasswd the server accepts only the default policy.
      expect(env.has('NIXERY_AUTH_HTPASSWD')).toBe(false);
      expect(env.get('NIXERY_ANONYMOUS') ?? 'build').toBe('build');
    });

    it('runs without capabilities, privilege escalation or an API token', () => {
      const sc = c.securityContext!;
      expect(sc.capabilities?.drop).toEqual(['ALL']);
      expect(sc.capabilities?.add ?? []).toEqual([]);
      expect(sc.allowPrivilegeEscalation).toBe(false);
      expect(sc.privileged).toBe(false);
      // Single-user Nix as root writes /nix and /etc: see the comments in the manifest.
      expect(sc.runAsUser).toBe(0);
      expect(sc.readOnlyRootFilesystem).toBe(false);
      // Without CAP_SETUID and friends Nix cannot switch to build users.
      expect(env.get('NIXERY_BUILD_USERS')).toBe('0');
      expect(pod.securityContext?.seccompProfile?.type).toBe('RuntimeDefault');
      expect(pod.automountServiceAccountToken).toBe(false);
      expect(pod.enableServiceLinks).toBe(false);
    });

    it('requests and limits resources, memory and ephemeral storage included', () => {
      const { requests = {}, limits = {} } = c.resources ?? {};
      for (const r of ['cpu', 'memory', 'ephemeral-storage']) expect(requests[r], `requests.${r}`).toBeDefined();
      for (const r of ['memory', 'ephemeral-storage']) {
        expect(limits[r], `limits.${r}`).toBeDefined();
        expect(quantity(limits[r]!)).toBeGreaterThanOrEqual(quantity(requests[r]!));
      }
    });

    it('rolls without a gap and gives running builds their grace period on shutdown', () => {
      expect(d.spec.strategy?.type).toBe('RollingUpdate');
      expect(d.spec.strategy?.rollingUpdate).toEqual({ maxUnavailable: 0, maxSurge: 1 });
      const grace = Number(env.get('NIXERY_SHUTDOWN_GRACE_SECONDS') ?? '20');
      const preStop = c.lifecycle?.preStop;
      const preStopSeconds = preStop?.sleep?.seconds ?? (preStop?.exec?.command[0] === '/bin/sleep' ? Number(preStop.exec.command[1]) : 0);
      expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(grace + preStopSeconds);
    });

    it('matches its own pods', () => {
      expect(d.spec.template.metadata.labels).toMatchObject(d.spec.selector.matchLabels);
    });

    it('mounts every volume it names, and names every volume it mounts', () => {
      const volumes = new Set((pod.volumes ?? []).map((v) => v.name));
      const mounted = new Set((c.volumeMounts ?? []).map((m) => m.name));
      expect([...mounted].sort()).toEqual([...volumes].sort());
    });
  });

  it('filesystem: STORAGE_PATH is a mounted volume on the node disk, and one replica serves it', () => {
    const d = deploymentIn('filesystem');
    const c = container(d);
    const env = envOf(c);
    expect(env.get('NIXERY_STORAGE_BACKEND') ?? 'filesystem').toBe('filesystem');
    expect(env.has('GCS_BUCKET')).toBe(false);
    const storagePath = env.get('STORAGE_PATH');
    expect(storagePath).toMatch(/^\//);
    const mount = c.volumeMounts?.find((m) => m.mountPath === storagePath);
    expect(mount, `a volumeMount at ${storagePath}`).toBeDefined();
    expect(mount!.readOnly ?? false).toBe(false);
    const volume = d.spec.template.spec.volumes?.find((v) => v.name === mount!.name);
    expect(volume?.emptyDir ?? volume?.persistentVolumeClaim, 'an emptyDir or a PVC').toBeDefined();
    // tmpfs has user xattrs only on recent kernels.
    expect(volume?.emptyDir?.medium).toBeUndefined();
    // A pod's blobs exist only in its own emptyDir.
    if (volume?.emptyDir) expect(d.spec.replicas).toBe(1);
  });

  it('gcs: the key Secret is mounted where GOOGLE_APPLICATION_CREDENTIALS points', () => {
    const d = deploymentIn('gcs');
    const c = container(d);
    const env = envOf(c);
    expect(env.get('NIXERY_STORAGE_BACKEND')).toBe('gcs');
    expect(env.get('GCS_BUCKET')).toMatch(/^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$/);
    expect(env.has('STORAGE_PATH')).toBe(false);
    const credentials = env.get('GOOGLE_APPLICATION_CREDENTIALS')!;
    expect(credentials).toMatch(/^\/.+\.json$/);
    const mount = c.volumeMounts?.find((m) => (m.subPath ? m.mountPath === credentials : path.dirname(credentials) === m.mountPath));
    expect(mount, `a volumeMount holding ${credentials}`).toBeDefined();
    expect(mount!.readOnly).toBe(true);
    const volume = d.spec.template.spec.volumes?.find((v) => v.name === mount!.name);
    expect(volume?.secret?.secretName).toBe('nixery-gcs-key');
    const fileInVolume = mount!.subPath ?? path.basename(credentials);
    const item = volume!.secret!.items?.find((i) => i.path === fileInVolume);
    expect(item, `a Secret item projected as ${fileInVolume}`).toBeDefined();
    expect(item!.key).toBe('key.json');
  });

  it('keeps the two Deployments identical apart from storage and replicas', () => {
    const strip = (d: Deployment) => {
      const copy = structuredClone(d);
      delete copy.spec.replicas;
      delete copy.spec.template.spec.volumes;
      const c = container(copy);
      delete c.volumeMounts;
      c.env = (c.env ?? []).filter((e) => !['STORAGE_PATH', 'NIXERY_STORAGE_BACKEND', 'GCS_BUCKET', 'GOOGLE_APPLICATION_CREDENTIALS'].includes(e.name));
      return copy;
    };
    expect(strip(deploymentIn('gcs'))).toEqual(strip(deploymentIn('filesystem')));
  });

  it('has a ClusterIP Service that selects the pods of both Deployments and targets their port', () => {
    expect(services).toHaveLength(1);
    const svc = services[0]!.doc;
    expect(svc.spec.type ?? 'ClusterIP').toBe('ClusterIP');
    for (const variant of ['filesystem', 'gcs']) {
      const d = deploymentIn(variant);
      expect(d.spec.template.metadata.labels, variant).toMatchObject(svc.spec.selector);
      for (const p of svc.spec.ports) expect(portNumber(container(d), p.targetPort ?? p.port), `${variant}: port ${p.port}`).toBe(8080);
    }
  });

  it('points the nodes’ containerd at the Service over plain HTTP', () => {
    const toml = readFileSync(path.join(K8S, 'containerd-hosts.toml'), 'utf8');
    const svc = services[0]!.doc;
    const port = svc.spec.ports[0]!.port;
    const address = port === 80 ? svc.spec.clusterIP : `${svc.spec.clusterIP}:${port}`;
    expect(svc.spec.clusterIP).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(toml).toMatch(new RegExp(`^server = "http://${address!.replaceAll('.', '\\.')}"$`, 'm'));
    expect(toml).toMatch(new RegExp(`^\\[host\\."http://${address!.replaceAll('.', '\\.')}"\\]$`, 'm'));
    expect(toml).toMatch(/^\s+capabilities = \["pull", "resolve"\]$/m);
    expect(toml).toMatch(/^\s+skip_verify = true$/m);
    // kind: the nodes read certs.d only with config_path set.
    const kind = docs.get('kind-cluster.yaml')?.[0] as { containerdConfigPatches?: string[] } | undefined;
    expect(kind?.containerdConfigPatches?.join('\n')).toMatch(/config_path = "\/etc\/containerd\/certs\.d"/);
  });

  describe.each(['filesystem', 'gcs'])('the %s-auth overlay', (variant) => {
    const overlay = `${variant}-auth`;
    const base = deploymentIn(variant);
    const d = renderedDeployment(overlay);
    const c = container(d);
    const env = envOf(c);
    const pod = d.spec.template.spec;

    it('is its variant with the auth Component', () => {
      const k = kustomizations.find((x) => x.file === `${overlay}/kustomization.yaml`)?.doc;
      expect(k?.resources).toEqual([`../${variant}`]);
      expect(k?.components).toEqual(['../auth']);
    });

    it('mounts the htpasswd Secret read-only, without subPath, where NIXERY_AUTH_HTPASSWD points', () => {
      expectSecretFile(d, 'NIXERY_AUTH_HTPASSWD', 'nixery-htpasswd', 'htpasswd');
    });

    it('mounts the kubernetes.io/tls Secret read-only, without subPath, where NIXERY_TLS_CERT and NIXERY_TLS_KEY point', () => {
      expectSecretFile(d, 'NIXERY_TLS_CERT', 'nixery-tls', 'tls.crt');
      expectSecretFile(d, 'NIXERY_TLS_KEY', 'nixery-tls', 'tls.key');
    });

    it('mounts no Secret with subPath, and every volume it names', () => {
      const secretVolumes = new Set((pod.volumes ?? []).filter((v) => v.secret).map((v) => v.name));
      for (const m of c.volumeMounts ?? []) if (secretVolumes.has(m.name)) expect(m.subPath, `${m.name}: subPath`).toBeUndefined();
      const volumes = new Set((pod.volumes ?? []).map((v) => v.name));
      const mounted = new Set((c.volumeMounts ?? []).map((m) => m.name));
      expect([...mounted].sort()).toEqual([...volumes].sort());
    });

    it('probes /readyz and /livez over HTTPS on the container port, without credentials', () => {
      expect(env.has('NIXERY_TLS_CERT') && env.has('NIXERY_TLS_KEY')).toBe(true);
      expectProbes(c);
      expect(c.readinessProbe?.httpGet?.scheme).toBe('HTTPS');
      expect(c.livenessProbe?.httpGet?.scheme).toBe('HTTPS');
    });

    it('sets an anonymous policy and keeps the admission limits of its variant', () => {
      expect(['build', 'pull', 'none']).toContain(env.get('NIXERY_ANONYMOUS'));
      for (const name of Object.keys(ADMISSION)) expect(env.get(name), name).toBe(envOf(container(base)).get(name));
    });

    it('serves HTTPS on 443 through the Service, to the container port', () => {
      expect(c.ports).toEqual([{ name: 'https', containerPort: 8080, protocol: 'TCP' }]);
      const svc = renderedService(overlay);
      expect(svc.spec.clusterIP).toBe(services[0]!.doc.spec.clusterIP);
      expect(svc.spec.ports).toHaveLength(1);
      expect(svc.spec.ports[0]!.port).toBe(443);
      expect(portNumber(c, svc.spec.ports[0]!.targetPort ?? 443)).toBe(8080);
      expect(d.spec.template.metadata.labels).toMatchObject(svc.spec.selector);
    });

    it('changes nothing else of its variant', () => {
      const AUTH_ENV = ['NIXERY_AUTH_HTPASSWD', 'NIXERY_ANONYMOUS', 'NIXERY_TLS_CERT', 'NIXERY_TLS_KEY'];
      const strip = (x: Deployment) => {
        const copy = structuredClone(x);
        const cc = container(copy);
        cc.env = (cc.env ?? []).filter((e) => !AUTH_ENV.includes(e.name));
        delete cc.ports;
        for (const probe of [cc.readinessProbe, cc.livenessProbe]) {
          delete probe?.httpGet?.scheme;
          if (probe?.httpGet) probe.httpGet.port = portNumber(container(x), probe.httpGet.port)!;
        }
        const authVolumes = new Set(['htpasswd', 'tls']);
        cc.volumeMounts = (cc.volumeMounts ?? []).filter((m) => !authVolumes.has(m.name));
        copy.spec.template.spec.volumes = (copy.spec.template.spec.volumes ?? []).filter((v) => !authVolumes.has(v.name));
        return copy;
      };
      expect(strip(d)).toEqual(strip(base));
    });

    if (variant === 'gcs') {
      it('keeps the signing key that authentication with gcs storage requires', () => {
        const credentials = env.get('GOOGLE_APPLICATION_CREDENTIALS');
        expect(credentials).toMatch(/^\/.+\.json$/);
        expect(c.volumeMounts?.some((m) => m.mountPath === path.dirname(credentials!) && m.readOnly)).toBe(true);
      });
    }
  });

  it('points the nodes’ containerd at the Service over HTTPS with the CA of its certificate, for the auth overlays', () => {
    const toml = readFileSync(path.join(K8S, 'auth/containerd-hosts.toml'), 'utf8');
    const svc = renderedService('filesystem-auth');
    const port = svc.spec.ports[0]!.port;
    const address = port === 443 ? svc.spec.clusterIP! : `${svc.spec.clusterIP}:${port}`;
    const quoted = address.replaceAll('.', '\\.');
    expect(toml).toMatch(new RegExp(`^server = "https://${quoted}"$`, 'm'));
    expect(toml).toMatch(new RegExp(`^\\[host\\."https://${quoted}"\\]$`, 'm'));
    expect(toml).toMatch(/^\s+capabilities = \["pull", "resolve"\]$/m);
    expect(toml).toMatch(/^\s+ca = "\/etc\/containerd\/certs\.d\/nixery\.internal\/[^"]+\.crt"$/m);
    expect(toml).not.toMatch(/^\s*skip_verify\s*=\s*true/m);
    expect(toml).not.toMatch(/http:\/\//);
  });
});
