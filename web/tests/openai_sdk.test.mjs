// The REST gateway driven by OpenAI's own Node SDK (the `openai` package
// from npm, unchanged), pointed at lathed with baseURL. Every response's
// raw JSON is also checked against the shapes OpenAI publishes (required
// fields, enums, nulls, list objects, error bodies).
//
// Run by tests/http_gateway_test.cc, which starts a real lathed (TLS, its
// private CA in NODE_EXTRA_CA_CERTS) and a worker, and passes:
// LATHE_HTTP_URL, LATHE_API_KEY, LATHE_OTHER_KEY (another project's key),
// LATHE_DEMO_DIR, LATHE_WORK_DIR and LATHE_RESULT (where the job ids go, for
// the gRPC side of the test).
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import test from "node:test";
import OpenAI from "openai";

const env = (k) => {
  assert.ok(process.env[k], `${k} must be set`);
  return process.env[k];
};
const baseURL = `${env("LATHE_HTTP_URL")}/v1`;
const work = env("LATHE_WORK_DIR");

// Every raw response the SDK receives, for the shape checks.
const raw = [];
async function recordingFetch(url, init) {
  const res = await fetch(url, init);
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.clone().text() : null;
  raw.push({ method: init?.method || "GET", url: String(url), status: res.status, body });
  return res;
}
const lastJson = () => JSON.parse(raw[raw.length - 1].body);
const client = new OpenAI({ baseURL, apiKey: env("LATHE_API_KEY"), maxRetries: 0, fetch: recordingFetch });
const other = new OpenAI({ baseURL, apiKey: env("LATHE_OTHER_KEY"), maxRetries: 0, fetch: recordingFetch });

// --- OpenAI's shapes -------------------------------------------------------
const isInt = (v) => Number.isInteger(v);
const isUnix = (v) => isInt(v) && v > 1.5e9 && v < Date.now() / 1000 + 3600;
const nullOr = (v, pred) => v === null || pred(v);
function hasKeys(o, keys) {
  for (const k of keys) assert.ok(Object.hasOwn(o, k), `missing "${k}" in ${JSON.stringify(o).slice(0, 300)}`);
}
function checkFile(o) {
  hasKeys(o, ["id", "object", "bytes", "created_at", "filename", "purpose", "status", "status_details", "expires_at"]);
  assert.equal(o.object, "file");
  assert.match(o.id, /^file-/);
  assert.ok(isInt(o.bytes) && o.bytes > 0);
  assert.ok(isUnix(o.created_at), `created_at ${o.created_at}`);
  assert.equal(o.purpose, "fine-tune");
  assert.ok(["uploaded", "processed", "error"].includes(o.status));
  assert.ok(nullOr(o.status_details, (v) => typeof v === "string"));
  assert.ok(nullOr(o.expires_at, isUnix));
}
const JOB_STATUSES = ["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"];
function checkJob(o) {
  hasKeys(o, ["id", "object", "created_at", "error", "fine_tuned_model", "finished_at", "hyperparameters", "model",
    "organization_id", "result_files", "seed", "status", "trained_tokens", "training_file", "validation_file",
    "estimated_finish", "integrations", "metadata", "method"]);
  assert.equal(o.object, "fine_tuning.job");
  assert.match(o.id, /^ftjob-/);
  assert.ok(isUnix(o.created_at));
  assert.ok(JOB_STATUSES.includes(o.status), o.status);
  assert.ok(nullOr(o.error, (e) => typeof e.code === "string" && typeof e.message === "string" &&
    Object.hasOwn(e, "param") && nullOr(e.param, (p) => typeof p === "string")));
  assert.ok(nullOr(o.fine_tuned_model, (v) => typeof v === "string"));
  assert.ok(nullOr(o.finished_at, isUnix));
  for (const k of ["n_epochs", "batch_size", "learning_rate_multiplier"]) {
    assert.ok(o.hyperparameters[k] === "auto" || typeof o.hyperparameters[k] === "number", k);
  }
  assert.equal(typeof o.model, "string");
  assert.equal(typeof o.organization_id, "string");
  assert.ok(Array.isArray(o.result_files) && o.result_files.every((f) => typeof f === "string"));
  assert.ok(isInt(o.seed));
  assert.ok(nullOr(o.trained_tokens, isInt));
  assert.match(o.training_file, /^file-/);
  assert.ok(nullOr(o.validation_file, (v) => typeof v === "string"));
  assert.ok(nullOr(o.estimated_finish, isUnix));
  assert.ok(nullOr(o.integrations, Array.isArray));
  assert.ok(nullOr(o.metadata, (m) => Object.values(m).every((v) => typeof v === "string")));
  assert.equal(typeof o.method.type, "string");
  assert.equal(typeof o.method[o.method.type].hyperparameters, "object");
  if (o.status === "succeeded") {
    assert.ok(isUnix(o.finished_at) && typeof o.fine_tuned_model === "string" && o.trained_tokens > 0);
  }
}
function checkEvent(o) {
  hasKeys(o, ["id", "object", "created_at", "level", "message", "type", "data"]);
  assert.equal(o.object, "fine_tuning.job.event");
  assert.ok(isUnix(o.created_at));
  assert.ok(["info", "warn", "error"].includes(o.level));
  assert.ok(["message", "metrics"].includes(o.type));
  assert.equal(typeof o.message, "string");
  if (o.type === "metrics") {
    for (const k of ["step", "total_steps", "train_loss", "train_mean_token_accuracy"]) assert.equal(typeof o.data[k], "number", k);
  }
}
function checkCheckpoint(o, jobId) {
  hasKeys(o, ["id", "object", "created_at", "fine_tuned_model_checkpoint", "fine_tuning_job_id", "metrics", "step_number"]);
  assert.equal(o.object, "fine_tuning.job.checkpoint");
  assert.equal(o.fine_tuning_job_id, jobId);
  assert.ok(isUnix(o.created_at));
  assert.ok(isInt(o.step_number) && o.step_number > 0);
  assert.equal(o.metrics.step, o.step_number);
  assert.equal(typeof o.metrics.train_loss, "number");
  assert.match(o.fine_tuned_model_checkpoint, /:ckpt-step-\d+$/);
}
function checkModel(o) {
  hasKeys(o, ["id", "object", "created", "owned_by"]);
  assert.equal(o.object, "model");
  assert.ok(isInt(o.created));
  assert.equal(typeof o.owned_by, "string");
}
function checkList(o, { hasMore = true, ids = false } = {}) {
  assert.equal(o.object, "list");
  assert.ok(Array.isArray(o.data));
  if (hasMore) assert.equal(typeof o.has_more, "boolean");
  if (ids) hasKeys(o, ["first_id", "last_id"]);
}
function checkError(status, param) {
  const last = raw[raw.length - 1];
  assert.equal(last.status, status, last.body);
  const body = JSON.parse(last.body);
  hasKeys(body.error, ["message", "type", "param", "code"]);
  assert.equal(typeof body.error.message, "string");
  assert.equal(typeof body.error.type, "string");
  if (param !== undefined) assert.equal(body.error.param, param, body.error.message);
  return body.error;
}
async function expectError(promise, status, param) {
  await assert.rejects(promise, (e) => e instanceof OpenAI.APIError && e.status === status);
  return checkError(status, param);
}
// Every page of a listing by hand, checking that `after` is honoured.
async function pageByHand(fetchPage, check) {
  const seen = [];
  let after;
  for (let i = 0; i < 1000; i++) {
    const page = await fetchPage(after);
    const body = lastJson();
    check(body);
    const ids = body.data.map((x) => x.id);
    for (const id of ids) assert.ok(!seen.includes(id), `id ${id} repeated after ${after}`);
    seen.push(...ids);
    if (!body.has_more || ids.length === 0) return seen;
    after = ids[ids.length - 1];
  }
  assert.fail("pagination did not end");
}

// --- The journey -----------------------------------------------------------
const demo = env("LATHE_DEMO_DIR");
const train = path.join(demo, "train.jsonl");
function writePairs(file, first, count) {
  const chats = fs.readFileSync(train, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l).messages);
  const lines = [];
  for (let i = first; i < first + count; i++) {
    const m = chats[i % chats.length];
    const otherChat = chats[(i + 7) % chats.length];
    lines.push(JSON.stringify({ input: { messages: m.slice(0, -1) }, preferred_output: [m[m.length - 1]],
      non_preferred_output: [otherChat[otherChat.length - 1]] }));
  }
  fs.writeFileSync(file, lines.join("\n") + "\n");
  return file;
}
const sha256 = (buf) => crypto.createHash("sha256").update(buf).digest("hex");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(id, statuses, seconds = 240) {
  for (let i = 0; i < seconds * 2; i++) {
    const job = await client.fineTuning.jobs.retrieve(id);
    if (statuses.includes(job.status)) return job;
    await sleep(500);
  }
  assert.fail(`job ${id} did not reach ${statuses}`);
}

test("the OpenAI SDK drives every path of the gateway", async () => {
  const result = {};

  // Files: upload (multipart), a bad file refused by line, list, get, content.
  const file = await client.files.create({ file: fs.createReadStream(train), purpose: "fine-tune" });
  checkFile(lastJson());
  assert.equal(file.status, "processed");
  assert.equal(file.bytes, fs.statSync(train).size);
  assert.equal(file.filename, "train.jsonl");
  const pairs = await client.files.create({ file: fs.createReadStream(writePairs(path.join(work, "pairs.jsonl"), 0, 16)),
    purpose: "fine-tune" });
  checkFile(lastJson());
  const badPath = path.join(work, "bad.jsonl");
  fs.writeFileSync(badPath, fs.readFileSync(train, "utf8").split("\n")[0] + "\n{not json\n");
  const bad = await expectError(client.files.create({ file: fs.createReadStream(badPath), purpose: "fine-tune" }), 400);
  assert.match(bad.message, /line 2/);
  assert.equal(bad.param, "line 2");
  await expectError(client.files.create({ file: fs.createReadStream(train), purpose: "batch" }), 400, "purpose");

  const listed = [];
  for await (const f of client.files.list({ limit: 1 })) {
    checkList(lastJson(), { ids: true });
    listed.push(f.id);
  }
  assert.deepEqual(listed, [pairs.id, file.id]);  // newest first, each once
  assert.deepEqual(await pageByHand((after) => client.files.list({ limit: 1, after }), (b) => checkList(b, { ids: true })),
    listed);
  const got = await client.files.retrieve(file.id);
  checkFile(lastJson());
  assert.deepEqual(got, { ...file });
  const content = await client.files.content(file.id);
  assert.equal(sha256(Buffer.from(await content.arrayBuffer())), sha256(fs.readFileSync(train)));
  await expectError(client.files.retrieve("file-doesnotexist"), 404);

  // Jobs: supervised (with Lathe's extensions under their own keys), DPO,
  // and one to cancel; errors name the field.
  const sft = await client.fineTuning.jobs.create({
    model: "lathe-demo", training_file: file.id, suffix: "sdk", seed: 7, metadata: { team: "a", run: "1" },
    method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 2, batch_size: 4, learning_rate_multiplier: "auto",
      checkpoint_every_steps: 5 } } },
    lora: { rank: 4 },
  });
  checkJob(lastJson());
  assert.ok(["validating_files", "queued"].includes(sft.status));
  assert.deepEqual(sft.metadata, { run: "1", team: "a" });
  assert.equal(sft.seed, 7);
  assert.equal(sft.hyperparameters.n_epochs, 2);
  assert.equal(sft.method.type, "supervised");
  const dpo = await client.fineTuning.jobs.create({
    model: "lathe-demo", training_file: pairs.id, metadata: { team: "b" },
    // Long enough to be still unfinished when it is paused below, however
    // fast the machine (a 1-epoch job once finished first).
    method: { type: "dpo", dpo: { hyperparameters: { beta: 0.1, n_epochs: 15, batch_size: 2 } } },
  });
  checkJob(lastJson());
  assert.equal(dpo.method.type, "dpo");
  assert.equal(dpo.method.dpo.hyperparameters.beta, 0.1);
  const doomed = await client.fineTuning.jobs.create({ model: "lathe-demo", training_file: file.id,
    hyperparameters: { n_epochs: 50 } });
  checkJob(lastJson());
  assert.equal(doomed.hyperparameters.n_epochs, 50);

  const e1 = await expectError(client.fineTuning.jobs.create({ model: "lathe-demo", training_file: file.id,
    method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 0 } } } }), 400);
  assert.match(e1.param, /^method\.supervised\.hyperparameters\.n_epochs/);
  await expectError(client.fineTuning.jobs.create({ model: "lathe-demo", training_file: file.id, bogus: 1 }), 400, "bogus");
  await expectError(client.fineTuning.jobs.create({ model: "lathe-demo", training_file: "file-nope" }), 404);
  await expectError(client.fineTuning.jobs.create({ model: "no-such-model", training_file: file.id }), 404);

  // Listing: auto-pagination ends; `after` exact; the metadata filter.
  const jobs = [];
  for await (const j of client.fineTuning.jobs.list({ limit: 1 })) {
    checkList(lastJson());
    checkJob(j);
    jobs.push(j.id);
  }
  assert.deepEqual(jobs, [doomed.id, dpo.id, sft.id]);
  assert.deepEqual(await pageByHand((after) => client.fineTuning.jobs.list({ limit: 2, after }), (b) => checkList(b)), jobs);
  const teamA = await client.fineTuning.jobs.list({ metadata: { team: "a" } });
  assert.deepEqual(teamA.data.map((j) => j.id), [sft.id]);

  // Cancel; pause and resume.
  const cancelled = await client.fineTuning.jobs.cancel(doomed.id);
  checkJob(lastJson());
  assert.equal(cancelled.status, "cancelled");
  const paused = await client.fineTuning.jobs.pause(dpo.id);
  checkJob(lastJson());
  assert.equal(paused.status, "paused");
  await expectError(client.fineTuning.jobs.pause(dpo.id), 400);
  const resumed = await client.fineTuning.jobs.resume(dpo.id);
  checkJob(lastJson());
  assert.ok(["queued", "paused", "running"].includes(resumed.status));

  const done = await waitFor(sft.id, ["succeeded", "failed"]);
  checkJob(lastJson());
  assert.equal(done.status, "succeeded", JSON.stringify(done.error));
  const doneDpo = await waitFor(dpo.id, ["succeeded", "failed"]);
  assert.equal(doneDpo.status, "succeeded", JSON.stringify(doneDpo.error));
  await waitFor(doomed.id, ["cancelled"]);
  await expectError(client.fineTuning.jobs.cancel(sft.id), 400);

  // Events: auto-pagination over all of them, `after` exact; one metrics
  // event per step.
  const events = [];
  for await (const e of client.fineTuning.jobs.listEvents(sft.id, { limit: 7 })) {
    checkList(lastJson());
    checkEvent(e);
    events.push(e);
  }
  const steps = Number(done.lathe.progress.steps_total);
  assert.equal(events.filter((e) => e.type === "metrics").length, steps);
  assert.deepEqual(await pageByHand((after) => client.fineTuning.jobs.listEvents(sft.id, { limit: 5, after }),
    (b) => { checkList(b); b.data.forEach(checkEvent); }), events.map((e) => e.id));
  const tail = await client.fineTuning.jobs.listEvents(sft.id, { after: events[events.length - 3].id, limit: 100 });
  assert.deepEqual(tail.data.map((e) => e.id), events.slice(-2).map((e) => e.id));
  assert.equal(tail.has_more, false);
  await expectError(client.fineTuning.jobs.listEvents(sft.id, { after: "ftevent-nope-1" }), 400, "after");

  // Checkpoints, newest first.
  const checkpoints = [];
  for await (const c of client.fineTuning.jobs.checkpoints.list(sft.id, { limit: 1 })) {
    checkList(lastJson(), { ids: true });
    checkCheckpoint(c, sft.id);
    checkpoints.push(c);
  }
  assert.ok(checkpoints.length >= 2, `${checkpoints.length} checkpoints`);
  const stepsSeen = checkpoints.map((c) => c.step_number);
  assert.deepEqual(stepsSeen, [...stepsSeen].sort((a, b) => b - a));

  // Lathe's adapter download: the listed files, each checked by SHA-256.
  const auth = { Authorization: `Bearer ${env("LATHE_API_KEY")}` };
  const adapter = await (await fetch(`${baseURL}/fine_tuning/jobs/${sft.id}/adapter`, { headers: auth })).json();
  checkList(adapter);
  assert.deepEqual(adapter.data.map((f) => f.name).sort(), ["adapter_config.json", "adapter_model.safetensors"]);
  for (const f of adapter.data) {
    const res = await fetch(`${env("LATHE_HTTP_URL")}${f.url}`, { headers: auth });
    assert.equal(res.status, 200);
    const bytes = Buffer.from(await res.arrayBuffer());
    assert.equal(bytes.length, f.bytes);
    assert.equal(sha256(bytes), f.sha256);
    fs.writeFileSync(path.join(work, f.name), bytes);
  }

  // Models: list, get; another project sees neither the job nor the model.
  const models = [];
  for await (const m of client.models.list()) {
    checkModel(m);
    models.push(m.id);
  }
  checkList(lastJson(), { hasMore: false });
  assert.ok(models.includes("lathe-demo"));
  assert.ok(models.includes(done.fine_tuned_model));
  assert.ok(models.includes(doneDpo.fine_tuned_model));
  checkModel(await client.models.retrieve(done.fine_tuned_model));
  await expectError(other.fineTuning.jobs.retrieve(sft.id), 404);
  await expectError(other.models.retrieve(done.fine_tuned_model), 404);
  await expectError(other.files.retrieve(file.id), 404);
  assert.deepEqual((await other.fineTuning.jobs.list()).data, []);
  await expectError(new OpenAI({ baseURL, apiKey: "lathe-wrong", maxRetries: 0, fetch: recordingFetch }).models.list(), 401);
  assert.equal(checkError(401).type, "authentication_error");

  // Deleting: the DPO job's model, then a file.
  const deleted = await client.models.delete(doneDpo.fine_tuned_model);
  assert.deepEqual(lastJson(), { object: "model", id: doneDpo.fine_tuned_model, deleted: true });
  assert.equal(deleted.deleted, true);
  await expectError(client.models.retrieve(doneDpo.fine_tuned_model), 404);
  assert.equal((await client.fineTuning.jobs.retrieve(dpo.id)).fine_tuned_model, null);
  await expectError(client.models.delete("lathe-demo"), 403);
  const gone = await client.files.delete(pairs.id);
  assert.deepEqual(lastJson(), { object: "file", id: pairs.id, deleted: true });
  assert.equal(gone.deleted, true);
  await expectError(client.files.retrieve(pairs.id), 404);

  Object.assign(result, { supervised: sft.id, dpo: dpo.id, cancelled: doomed.id, deleted_model: doneDpo.fine_tuned_model,
    fine_tuned_model: done.fine_tuned_model, steps, file: file.id, responses: raw.length });
  fs.writeFileSync(env("LATHE_RESULT"), JSON.stringify(result));
});
