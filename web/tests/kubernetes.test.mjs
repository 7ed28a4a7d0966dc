// deploy/kubernetes: every overlay rendered with `kubectl kustomize`, each
// object checked against the Kubernetes schemas (kubernetes-models: the
// API's OpenAPI schemas as validators) and against Lathe itself (every
// flag a container passes is one the built lathed / lathe-worker knows,
// every Secret, ConfigMap and claim a pod names is rendered beside it),
// plus what docs/kubernetes.md promises: one lathed with a ReadWriteOnce
// data directory, probes on /readyz and /healthz, GPU workers only in GPU
// overlays, disruption budgets. No cluster runs here, so the cpu overlay's
// pods are then run as plain processes with the rendered arguments, their
// volumes made of the rendered Secrets and ConfigMaps: lathed must become
// ready over TLS with the generated certificate and the worker must join
// it over mutual TLS with the generated token.
//
//   LATHED_BIN=build/server/lathed \
//   LATHE_WORKER_BIN=build/worker/agent/lathe-worker \
//   node --test web/tests/kubernetes.test.mjs
//
// KUBECTL names the kubectl (default: kubectl on PATH; Debian 12's
// kubernetes-client is 1.20, whose kustomize is v2.0.3).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const KUBECTL = process.env.KUBECTL || "kubectl";
const LATHED_BIN = process.env.LATHED_BIN;
const LATHE_WORKER_BIN = process.env.LATHE_WORKER_BIN;

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 64 << 20, ...opts });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  return r;
}

// ---------------------------------------------------------------------------
// The tree, copied to a scratch folder with each overlay's secrets made by
// make-secrets.sh, as an operator would (the repository holds none).

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "lathe-k8s-"));
// On exit, so that a failure while setting up removes it too.
process.on("exit", () => fs.rmSync(scratch, { recursive: true, force: true }));
fs.cpSync(path.join(repo, "deploy/kubernetes"), path.join(scratch, "deploy/kubernetes"), {
  recursive: true,
  filter: (src) => !/\/overlays\/[^/]+\/secrets(\/|$)/.test(src),
});
fs.mkdirSync(path.join(scratch, "scripts"));
fs.copyFileSync(path.join(repo, "scripts/make-certs.sh"), path.join(scratch, "scripts/make-certs.sh"));

const overlaysDir = path.join(scratch, "deploy/kubernetes/overlays");
const overlays = fs
  .readdirSync(overlaysDir, { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .map((d) => d.name)
  .sort();

const NAMESPACE = "lathe";
for (const o of overlays) {
  const r = run("bash", [
    path.join(scratch, "deploy/kubernetes/make-secrets.sh"),
    path.join(overlaysDir, o, "secrets"),
    NAMESPACE,
  ]);
  if (r.status !== 0) throw new Error(`make-secrets.sh for ${o}:\n${r.stdout}${r.stderr}`);
}

function render(overlay) {
  const r = run(KUBECTL, ["kustomize", path.join(overlaysDir, overlay)]);
  assert.equal(r.status, 0, `${KUBECTL} kustomize overlays/${overlay}:\n${r.stderr}`);
  const docs = parseAllDocuments(r.stdout);
  for (const d of docs) {
    assert.deepEqual(d.errors, [], `overlays/${overlay}: YAML errors`);
  }
  const objs = docs.map((d) => d.toJSON()).filter((o) => o != null);
  // kustomize 5 wraps a Secret's base64 at 70 columns; the API server's
  // decoder (Go's encoding/base64) skips the line breaks, the schema's
  // "byte" format does not.
  for (const o of objs) {
    if (o.kind !== "Secret") continue;
    for (const k of Object.keys(o.data ?? {})) o.data[k] = o.data[k].replace(/[\r\n]/g, "");
  }
  return objs;
}

// Each overlay's objects, or the error rendering it gave (which fails each
// of its tests).
const renders = new Map(
  overlays.map((o) => {
    try {
      return [o, { objs: render(o) }];
    } catch (error) {
      return [o, { error }];
    }
  }),
);
const rendered = {
  get(overlay) {
    const r = renders.get(overlay);
    if (!r) throw new Error(`there is no overlays/${overlay}`);
    if (r.error) throw r.error;
    return r.objs;
  },
};

// ---------------------------------------------------------------------------
// Schemas: apiVersion + kind -> the kubernetes-models class, which carries
// the API's schema for that kind.

async function modelClass(apiVersion, kind) {
  let mod;
  try {
    mod = await import(`kubernetes-models/${apiVersion}`);
  } catch {
    return undefined;
  }
  const cls = mod[kind];
  return typeof cls === "function" && cls.apiVersion === apiVersion && cls.kind === kind
    ? cls
    : undefined;
}

function errorsOf(cls, obj) {
  try {
    new cls(obj).validate();
    return [];
  } catch (e) {
    if (!e.errors) throw e;
    return e.errors;
  }
}

const pointer = (segments) =>
  segments.map((s) => "/" + String(s).replaceAll("~", "~0").replaceAll("/", "~1")).join("");

// The schemas allow properties they do not name (a typo'd field passes
// validate()), while an API server drops or refuses them. So each key is
// probed: given a value no schema type accepts, a key the schema knows
// fails at its own path; a key it does not know goes unnoticed.
function unknownFields(cls, obj) {
  const unknown = [];
  const visit = (value, at) => {
    if (Array.isArray(value)) {
      value.forEach((v, i) => visit(v, [...at, i]));
      return;
    }
    if (value === null || typeof value !== "object") return;
    for (const key of Object.keys(value)) {
      const probe = structuredClone(obj);
      let parent = probe;
      for (const s of at) parent = parent[s];
      parent[key] = Symbol("probe");
      const where = pointer([...at, key]);
      const errs = errorsOf(cls, probe);
      if (!errs.some((e) => e.instancePath === where)) {
        unknown.push(where);
        continue;
      }
      visit(value[key], [...at, key]);
    }
  };
  visit(obj, []);
  return unknown;
}

// ---------------------------------------------------------------------------
// Lathe's own flags, from the built binaries' --helpfull (only the flags
// their main.cc defines, not Abseil's).

function ownFlags(bin, args, mainFile) {
  assert.ok(bin, "set LATHED_BIN and LATHE_WORKER_BIN to the built binaries");
  const r = run(bin, args);
  const out = r.stdout + r.stderr;
  const flags = new Set();
  let inMain = false;
  for (const line of out.split("\n")) {
    const section = line.match(/^\s*Flags from (.*):$/);
    if (section) {
      inMain = section[1].endsWith(mainFile);
      continue;
    }
    const flag = line.match(/^\s+--([a-z0-9_]+) \(/);
    if (inMain && flag) flags.add(flag[1]);
  }
  assert.ok(flags.size > 5, `${bin} ${args.join(" ")}: no flags from ${mainFile} in:\n${out}`);
  return flags;
}

const lathedFlags = ownFlags(LATHED_BIN, ["--helpfull"], "server/main.cc");
const workerFlags = ownFlags(LATHE_WORKER_BIN, ["serve", "--helpfull"], "worker/main.cc");
const engineUsage = (() => {
  const r = run(LATHE_WORKER_BIN, ["--help"]);
  return r.stdout + r.stderr;
})();

// The flags of one container of lathed or lathe-worker, or an error.
function checkLatheArgs(where, container) {
  const [program, ...rest] = [...(container.command ?? []), ...(container.args ?? [])];
  const name = path.basename(program ?? "");
  let known;
  let args = rest;
  if (name === "lathed") {
    known = lathedFlags;
  } else if (name === "lathe-worker" && args[0] === "serve") {
    known = workerFlags;
    args = args.slice(1);
  } else if (name === "lathe-worker") {
    // An engine command (make-demo, ...): its options as its usage lists them.
    const lines = engineUsage.split("\n").filter((l) => l.includes(` ${args[0]} `));
    assert.ok(lines.length > 0, `${where}: lathe-worker has no command ${args[0]}`);
    for (const a of args.slice(1).filter((a) => a.startsWith("--"))) {
      assert.ok(
        lines.some((l) => l.includes(a.split("=")[0])),
        `${where}: lathe-worker ${args[0]} has no option ${a}`,
      );
    }
    return;
  } else {
    assert.fail(`${where}: runs ${program}, neither lathed nor lathe-worker`);
  }
  for (const a of args) {
    const m = a.match(/^--([a-z0-9_]+)(=|$)/);
    assert.ok(m, `${where}: argument ${a} is not --flag or --flag=value`);
    assert.ok(known.has(m[1]), `${where}: ${name} has no flag --${m[1]}`);
  }
}

const flagValue = (container, flag) => {
  const all = [...(container.command ?? []), ...(container.args ?? [])];
  const a = all.find((x) => x.startsWith(`--${flag}=`));
  return a === undefined ? undefined : a.slice(flag.length + 3);
};

// ---------------------------------------------------------------------------
// Helpers over a rendered overlay.

const find = (objs, kind, name) =>
  objs.find((o) => o.kind === kind && o.metadata?.name === name);
const podSpecOf = (o) => o.spec?.template?.spec;
const workloads = (objs) => objs.filter((o) => ["StatefulSet", "Deployment"].includes(o.kind));
const containersOf = (spec) => [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
const matches = (selector, labels) =>
  Object.entries(selector ?? {}).every(([k, v]) => labels?.[k] === v);

// The volume a path inside the container lies on, and the path in it.
function volumeAt(spec, container, file) {
  let best;
  for (const m of container.volumeMounts ?? []) {
    const prefix = m.mountPath.replace(/\/$/, "") + "/";
    if ((file + "/").startsWith(prefix) && (!best || m.mountPath.length > best.mountPath.length)) {
      best = m;
    }
  }
  if (!best) return undefined;
  const volume = (spec.volumes ?? []).find((v) => v.name === best.name);
  return { mount: best, volume, rest: path.relative(best.mountPath, file) };
}

const kindOfVolume = (v) =>
  v ? Object.keys(v).find((k) => k !== "name") : "volumeClaimTemplate";

// ---------------------------------------------------------------------------

test("the repository holds overlays, and no secrets", () => {
  for (const o of ["cpu", "gpu"]) assert.ok(overlays.includes(o), `overlays/${o} is missing`);
  // What git holds or would take (tracked, or untracked and not ignored).
  const git = run("git", ["-C", repo, "ls-files", "--cached", "--others", "--exclude-standard",
    "deploy/kubernetes"]);
  if (git.status !== 0) return; // not a git checkout
  const tracked = git.stdout.split("\n").filter(Boolean);
  assert.ok(tracked.length > 0);
  for (const f of tracked) {
    assert.ok(!/\.(pem|key|token|srl)$/.test(f) && !/\/secrets\//.test(f), `${f} is a secret in git`);
  }
});

for (const overlay of overlays) {
  const label = `overlays/${overlay}`;
  // Each test gets the overlay's objects (or fails with its render error).
  const overlayTest = (name, fn) => test(`${label}: ${name}`, () => fn(rendered.get(overlay)));

  overlayTest("every object passes the Kubernetes schema of its kind", async (objs) => {
    assert.ok(objs.length > 0, `${label} rendered nothing`);
    for (const obj of objs) {
      const id = `${label}: ${obj.kind} ${obj.metadata?.name}`;
      const cls = await modelClass(obj.apiVersion, obj.kind);
      assert.ok(cls, `${id}: no schema for apiVersion ${obj.apiVersion} kind ${obj.kind}`);
      const errs = errorsOf(cls, obj);
      assert.deepEqual(
        errs.map((e) => `${e.instancePath} ${e.message}`),
        [],
        `${id} fails its schema`,
      );
      assert.deepEqual(unknownFields(cls, obj), [], `${id}: fields its schema does not have`);
      assert.match(obj.metadata?.name ?? "", /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, `${id}: name`);
      if (obj.kind !== "Namespace") {
        assert.equal(obj.metadata.namespace, NAMESPACE, `${id}: namespace`);
      }
    }
  });

  overlayTest("lathed is one StatefulSet pod on a ReadWriteOnce data directory", (objs) => {
    const sets = objs.filter((o) => o.kind === "StatefulSet");
    assert.equal(sets.length, 1, "exactly one StatefulSet");
    const sts = sets[0];
    assert.equal(sts.metadata.name, "lathed");
    assert.equal(sts.spec.replicas, 1, "SQLite: one writer, never more than one replica");
    assert.equal(sts.spec.podManagementPolicy ?? "OrderedReady", "OrderedReady");
    assert.equal(sts.spec.updateStrategy?.type ?? "RollingUpdate", "RollingUpdate");
    assert.ok(
      !objs.some((o) => o.kind === "HorizontalPodAutoscaler"),
      "nothing may scale lathed",
    );
    const spec = podSpecOf(sts);
    assert.ok(spec.terminationGracePeriodSeconds > 10, "grace above lathed's 10 s drain");

    const lathed = spec.containers.find((c) => c.name === "lathed");
    assert.ok(lathed, "a container named lathed");
    const dataDir = flagValue(lathed, "data_dir");
    assert.ok(dataDir, "--data_dir");
    const at = volumeAt(spec, lathed, dataDir);
    assert.ok(at && at.rest === "", `--data_dir ${dataDir} is a volume's mount point`);
    assert.ok(!at.mount.readOnly, "the data directory is writable");
    assert.equal(at.volume, undefined, "the data directory comes from a volumeClaimTemplate");
    const claims = sts.spec.volumeClaimTemplates ?? [];
    const claim = claims.find((c) => c.metadata.name === at.mount.name);
    assert.ok(claim, `a volumeClaimTemplate named ${at.mount.name}`);
    assert.deepEqual(claim.spec.accessModes, ["ReadWriteOnce"]);
    assert.ok(claim.spec.resources?.requests?.storage, "a size");

    const headless = find(objs, "Service", sts.spec.serviceName);
    assert.ok(headless, `the governing Service ${sts.spec.serviceName}`);
    assert.equal(headless.spec.clusterIP, "None");
  });

  overlayTest("lathed's probes are /readyz, /healthz and a startup probe over HTTPS", (objs) => {
    const sts = find(objs, "StatefulSet", "lathed");
    const lathed = podSpecOf(sts).containers.find((c) => c.name === "lathed");
    const httpPort = Number(flagValue(lathed, "http_listen").split(":").pop());
    assert.equal(httpPort, 8080);
    assert.equal(flagValue(lathed, "insecure"), undefined, "TLS, not --insecure");
    const portOf = (p) =>
      typeof p === "number" ? p : lathed.ports.find((q) => q.name === p)?.containerPort;
    for (const [probe, route] of [
      ["readinessProbe", "/readyz"],
      ["livenessProbe", "/healthz"],
      ["startupProbe", "/healthz"],
    ]) {
      const g = lathed[probe]?.httpGet;
      assert.ok(g, `${probe} is an httpGet`);
      assert.equal(g.path, route, `${probe} path`);
      assert.equal(g.scheme, "HTTPS", `${probe} scheme`);
      assert.equal(portOf(g.port), httpPort, `${probe} port`);
    }
  });

  overlayTest("Services for the API, the workers and the StatefulSet", (objs) => {
    const sts = find(objs, "StatefulSet", "lathed");
    const podLabels = sts.spec.template.metadata.labels;
    const lathed = podSpecOf(sts).containers.find((c) => c.name === "lathed");
    const target = (p) =>
      typeof p === "number" ? p : lathed.ports.find((q) => q.name === p)?.containerPort;
    const listen = (flag) => Number(flagValue(lathed, flag).split(":").pop());
    const expect = {
      "lathed-api": [listen("listen"), listen("http_listen")],
      "lathed-workers": [listen("worker_listen")],
    };
    assert.deepEqual(expect["lathed-api"], [7070, 8080]);
    assert.deepEqual(expect["lathed-workers"], [7071]);
    for (const [name, ports] of Object.entries(expect)) {
      const svc = find(objs, "Service", name);
      assert.ok(svc, `Service ${name}`);
      assert.ok(matches(svc.spec.selector, podLabels), `${name} selects lathed's pod`);
      assert.deepEqual(svc.spec.ports.map((p) => target(p.targetPort ?? p.port)), ports);
    }
    for (const svc of objs.filter((o) => o.kind === "Service")) {
      for (const p of svc.spec.ports) {
        assert.ok(target(p.targetPort ?? p.port), `${svc.metadata.name}: port ${p.name} targets a container port`);
      }
    }
  });

  overlayTest("workers join lathed-workers:7071 with the token and a client certificate", (objs) => {
    const deps = objs.filter((o) => o.kind === "Deployment" && o.metadata.name === "lathe-worker");
    assert.equal(deps.length, 1, "a Deployment lathe-worker");
    const spec = podSpecOf(deps[0]);
    const c = spec.containers.find((x) => x.name === "lathe-worker");
    assert.deepEqual(c.command, ["lathe-worker"]);
    assert.equal(c.args[0], "serve");
    assert.equal(flagValue(c, "server"), "lathed-workers:7071");
    for (const f of ["token_file", "ca_cert", "tls_cert", "tls_key"]) {
      const file = flagValue(c, f);
      assert.ok(file, `--${f}`);
      assert.equal(kindOfVolume(volumeAt(spec, c, file)?.volume), "secret", `--${f} from a Secret`);
    }
    assert.ok(spec.terminationGracePeriodSeconds >= 60, "time to checkpoint and hand back");
    // The worker token is the one lathed reads.
    const sts = find(objs, "StatefulSet", "lathed");
    const lathed = podSpecOf(sts).containers.find((x) => x.name === "lathed");
    const secretOf = (s, ctr, file) => {
      const at = volumeAt(s, ctr, file);
      return [at.volume.secret.secretName, at.rest];
    };
    assert.deepEqual(
      secretOf(spec, c, flagValue(c, "token_file")),
      secretOf(podSpecOf(sts), lathed, flagValue(lathed, "worker_token_file")),
      "workers and lathed read the same token",
    );
  });

  overlayTest("GPU workers ask for nvidia.com/gpu, CPU workers do not", (objs) => {
    const dep = find(objs, "Deployment", "lathe-worker");
    const spec = podSpecOf(dep);
    const c = spec.containers.find((x) => x.name === "lathe-worker");
    const gpus = c.resources?.limits?.["nvidia.com/gpu"];
    const device = flagValue(c, "device") ?? "auto";
    if (overlay === "cpu") assert.equal(gpus, undefined, "the cpu overlay asks for no GPU");
    if (overlay === "gpu") assert.equal(Number(gpus), 1, "the gpu overlay: one GPU per worker");
    if (gpus !== undefined) {
      assert.equal(Number(gpus), 1, "one GPU per worker process");
      assert.match(device, /^cuda$/, "a GPU worker trains on its GPU");
      assert.ok(
        (spec.tolerations ?? []).some((t) => t.key === "nvidia.com/gpu"),
        "tolerates the GPU nodes' taint",
      );
    } else {
      assert.equal(device, "cpu", "a worker without a GPU says --device=cpu");
      assert.ok(!JSON.stringify(objs).includes("nvidia.com/gpu\":"), "no GPU request anywhere");
    }
  });

  overlayTest("disruption budgets for lathed and the workers", (objs) => {
    for (const w of workloads(objs)) {
      const pdbs = objs.filter(
        (o) => o.kind === "PodDisruptionBudget" &&
          matches(o.spec.selector.matchLabels, w.spec.template.metadata.labels),
      );
      assert.equal(pdbs.length, 1, `one PodDisruptionBudget selects ${w.kind} ${w.metadata.name}`);
      const pdb = pdbs[0].spec;
      const replicas = w.spec.replicas ?? 1;
      // A budget a single pod can never meet blocks every drain of its node.
      assert.ok(
        !(pdb.maxUnavailable === 0 || pdb.maxUnavailable === "0%" ||
          (typeof pdb.minAvailable === "number" && pdb.minAvailable >= replicas)),
        `${w.metadata.name}: its budget would block node drains forever`,
      );
    }
  });

  overlayTest("Lathe's flags, and everything a pod names, exist", (objs) => {
    const names = (kind) => new Set(objs.filter((o) => o.kind === kind).map((o) => o.metadata.name));
    const secrets = names("Secret");
    const configMaps = names("ConfigMap");
    const pvcs = names("PersistentVolumeClaim");
    for (const w of workloads(objs)) {
      const spec = podSpecOf(w);
      const claimTemplates = new Set((w.spec.volumeClaimTemplates ?? []).map((c) => c.metadata.name));
      const volumes = new Set((spec.volumes ?? []).map((v) => v.name));
      for (const v of spec.volumes ?? []) {
        const where = `${w.kind} ${w.metadata.name} volume ${v.name}`;
        if (v.secret) assert.ok(secrets.has(v.secret.secretName), `${where}: Secret ${v.secret.secretName}`);
        if (v.configMap) assert.ok(configMaps.has(v.configMap.name), `${where}: ConfigMap ${v.configMap.name}`);
        if (v.persistentVolumeClaim) {
          assert.ok(pvcs.has(v.persistentVolumeClaim.claimName), `${where}: claim ${v.persistentVolumeClaim.claimName}`);
        }
      }
      for (const c of containersOf(spec)) {
        const where = `${w.kind} ${w.metadata.name} container ${c.name}`;
        checkLatheArgs(where, c);
        for (const m of c.volumeMounts ?? []) {
          assert.ok(volumes.has(m.name) || claimTemplates.has(m.name), `${where}: mount ${m.name}`);
        }
        const env = new Set((c.env ?? []).map((e) => e.name));
        for (const e of c.env ?? []) {
          const cm = e.valueFrom?.configMapKeyRef;
          if (cm) {
            const obj = find(objs, "ConfigMap", cm.name);
            assert.ok(obj && cm.key in (obj.data ?? {}), `${where}: ConfigMap ${cm.name} key ${cm.key}`);
          }
          const sk = e.valueFrom?.secretKeyRef;
          if (sk) {
            const obj = find(objs, "Secret", sk.name);
            assert.ok(obj && sk.key in (obj.data ?? {}), `${where}: Secret ${sk.name} key ${sk.key}`);
          }
        }
        for (const a of [...(c.command ?? []), ...(c.args ?? [])]) {
          for (const [, v] of a.matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) {
            assert.ok(env.has(v), `${where}: ${a} names $(${v}), which the container does not set`);
          }
          // A file a flag names inside a Secret volume is one of its keys.
          const file = a.match(/^--[a-z0-9_]+=(\/.*)$/)?.[1];
          const at = file && volumeAt(spec, c, file);
          if (at?.volume?.secret) {
            const s = find(objs, "Secret", at.volume.secret.secretName);
            assert.ok(at.rest in (s.data ?? {}), `${where}: ${a}: Secret ${s.metadata.name} has no key ${at.rest}`);
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// The cpu overlay's pods as processes: each volume a folder (a Secret's or
// ConfigMap's keys as files, anything else empty), each mount path mapped to
// its folder, $(VAR) expanded from the container's env, the listen ports
// moved to free loopback ports.

function podFiles(objs, w, root) {
  const spec = podSpecOf(w);
  const dirs = new Map();
  const claimNames = (w.spec.volumeClaimTemplates ?? []).map((c) => c.metadata.name);
  for (const name of [...(spec.volumes ?? []).map((v) => v.name), ...claimNames]) {
    const dir = path.join(root, w.metadata.name, name);
    fs.mkdirSync(dir, { recursive: true });
    const v = (spec.volumes ?? []).find((x) => x.name === name);
    const source = v?.secret
      ? Object.entries(find(objs, "Secret", v.secret.secretName).data).map(([k, b]) => [k, Buffer.from(b, "base64")])
      : v?.configMap
        ? Object.entries(find(objs, "ConfigMap", v.configMap.name).data)
        : [];
    for (const [k, content] of source) fs.writeFileSync(path.join(dir, k), content, { mode: 0o600 });
    dirs.set(name, dir);
  }
  return (container) => {
    const env = {};
    for (const e of container.env ?? []) {
      if (e.value !== undefined) env[e.name] = e.value;
      const cm = e.valueFrom?.configMapKeyRef;
      if (cm) env[e.name] = find(objs, "ConfigMap", cm.name).data[cm.key];
      if (e.valueFrom?.fieldRef?.fieldPath === "metadata.name") env[e.name] = `${w.metadata.name}-test`;
    }
    const mounts = [...(container.volumeMounts ?? [])].sort((a, b) => b.mountPath.length - a.mountPath.length);
    const local = (p) => {
      for (const m of mounts) {
        if (p === m.mountPath || p.startsWith(m.mountPath + "/")) {
          return dirs.get(m.name) + p.slice(m.mountPath.length);
        }
      }
      return p;
    };
    // Paths (a flag's value, a bare argument, or each NAME=PATH in a list).
    const paths = (a) => a.replace(/(^|=|,)(\/[^,=]*)/g, (_, pre, p) => pre + local(p));
    const argv = [...(container.command ?? []), ...(container.args ?? [])].map((a) =>
      paths(a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (_, v) => env[v] ?? "")),
    );
    for (const k of Object.keys(env)) env[k] = paths(env[k]);
    return { argv, env };
  };
}

function get(url, { ca, servername, headers = {} }) {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, servername, headers }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("error", reject);
    req.setTimeout(5000, () => req.destroy(new Error("timeout")));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("overlays/cpu: its lathed and worker, run as processes, serve and join", async (t) => {
  const objs = rendered.get("cpu");
  const root = path.join(scratch, "pods");
  const children = [];
  t.after(() => children.forEach((c) => c.exitCode === null && c.kill("SIGKILL")));
  const exe = (argv) => {
    const bin = { lathed: LATHED_BIN, "lathe-worker": LATHE_WORKER_BIN }[argv[0]];
    assert.ok(bin, `runs ${argv[0]}`);
    return [bin, argv.slice(1)];
  };
  const start = ({ argv, env }, logName) => {
    const [bin, args] = exe(argv);
    const log = fs.openSync(path.join(root, logName), "w");
    const child = spawn(bin, args, { stdio: ["ignore", log, log], env: { ...process.env, ...env } });
    children.push(child);
    return child;
  };
  const logOf = (name) => fs.readFileSync(path.join(root, name), "utf8");

  // lathed: its init containers first, then lathed itself.
  const sts = find(objs, "StatefulSet", "lathed");
  const lathedArgv = podFiles(objs, sts, root);
  for (const ic of podSpecOf(sts).initContainers ?? []) {
    const { argv, env } = lathedArgv(ic);
    const [bin, args] = exe(argv);
    const r = run(bin, args, { env: { ...process.env, ...env } });
    assert.equal(r.status, 0, `init container ${ic.name}: ${r.stdout}${r.stderr}`);
  }
  const lathedC = podSpecOf(sts).containers.find((c) => c.name === "lathed");
  const portFile = path.join(root, "lathed.port");
  const lathedPod = lathedArgv(lathedC);
  const argv = lathedPod.argv.map((a) =>
    a.replace(/^(--(?:listen|worker_listen|http_listen))=0\.0\.0\.0:\d+$/, "$1=127.0.0.1:0"),
  );
  const lathed = start({ argv: [...argv, `--port_file=${portFile}`], env: lathedPod.env }, "lathed.log");
  let ports;
  for (let i = 0; i < 300 && !ports; i++) {
    assert.equal(lathed.exitCode, null, `lathed exited:\n${logOf("lathed.log")}`);
    if (fs.existsSync(portFile) && fs.existsSync(portFile + ".http") && fs.existsSync(portFile + ".worker")) {
      ports = {
        api: fs.readFileSync(portFile, "utf8").trim(),
        http: fs.readFileSync(portFile + ".http", "utf8").trim(),
        worker: fs.readFileSync(portFile + ".worker", "utf8").trim(),
      };
    }
    await sleep(100);
  }
  assert.ok(ports, `lathed did not start:\n${logOf("lathed.log")}`);

  // Over TLS, trusting only the rendered CA and checking the Service's name.
  const tls = find(objs, "Secret", podSpecOf(sts).volumes.find((v) => v.name === "tls").secret.secretName);
  const ca = Buffer.from(tls.data["ca.crt"], "base64");
  const base = `https://127.0.0.1:${ports.http}`;
  const opts = { ca, servername: "lathed-api" };
  const probe = (p) => lathedC[p].httpGet.path;
  assert.equal((await get(base + probe("startupProbe"), opts)).status, 200);
  assert.equal((await get(base + probe("livenessProbe"), opts)).status, 200);
  assert.equal((await get(base + probe("readinessProbe"), opts)).status, 200);

  // The admin key is the Secret's, and the base model list was applied.
  const adminSecret = find(objs, "Secret", podSpecOf(sts).volumes.find((v) => v.name === "admin-key").secret.secretName);
  const adminKey = Buffer.from(adminSecret.data["admin.key"], "base64").toString().trim();
  const models = await get(base + "/v1/models", { ...opts, headers: { Authorization: `Bearer ${adminKey}` } });
  assert.equal(models.status, 200, models.body);
  const wanted = find(objs, "ConfigMap", lathedC.env.find((e) => e.name === "LATHE_BASE_MODELS").valueFrom.configMapKeyRef.name)
    .data.base_models.split(",").map((s) => s.split("=")[0]);
  const served = JSON.parse(models.body).data.map((m) => m.id);
  for (const m of wanted) assert.ok(served.includes(m), `base model ${m} registered (${served})`);

  // The worker, dialling the workers' Service name through its certificate.
  const dep = find(objs, "Deployment", "lathe-worker");
  const workerC = podSpecOf(dep).containers.find((c) => c.name === "lathe-worker");
  const workerPod = podFiles(objs, dep, root)(workerC);
  const workerArgv = workerPod.argv.map((a) =>
    a === "--server=lathed-workers:7071" ? `--server=127.0.0.1:${ports.worker}` : a,
  );
  const worker = start(
    { argv: [...workerArgv, "--tls_server_name=lathed-workers"], env: workerPod.env },
    "worker.log",
  );
  let joined = false;
  for (let i = 0; i < 300 && !joined; i++) {
    assert.equal(worker.exitCode, null, `the worker exited:\n${logOf("worker.log")}`);
    const m = await get(base + "/metrics", opts);
    const idle = m.body.match(/^lathe_workers\{state="idle"\} (\d+)/m);
    joined = idle && Number(idle[1]) >= 1;
    if (!joined) await sleep(100);
  }
  assert.ok(joined, `the worker did not join:\n${logOf("worker.log")}\n${logOf("lathed.log")}`);

  // SIGTERM: lathed stops within its grace period.
  const t0 = Date.now();
  worker.kill("SIGTERM");
  lathed.kill("SIGTERM");
  await new Promise((r) => (lathed.exitCode !== null ? r() : lathed.on("exit", r)));
  assert.equal(lathed.exitCode, 0, logOf("lathed.log"));
  assert.ok(Date.now() - t0 < podSpecOf(sts).terminationGracePeriodSeconds * 1000);
});
