/**
 * The Kubernetes manifests under deploy/kubernetes: every YAML parses, the
 * kustomizations name files that exist, and the Deployments agree with the
 * server (probe paths and ports, shutdown grace, storage configuration) and
 * with the Service and the nodes' containerd configuration.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';

const ROOT = path.resolve(import.meta.dirname, '../..');
const K8S = path.join(ROOT, 'deploy/kubernetes');

// Just the fields the checks read.
interface EnvVar {
  name: string;
  value?: string;
}
interface Probe {
  httpGet?: { path: string; port: number | string };
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
  secret?: { secretName: string; items?: { key: string; path: string }[] };
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
interface Kustomization {
  kind: 'Kustomization';
  resources?: string[];
  images?: { name: string; newName?: string; newTag?: string }[];
}
type Doc = { kind?: string; apiVersion?: string; metadata?: { namespace?: string } } & Record<string, unknown>;

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
    for (const { file, doc } of kustomizations) {
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
});
