// The dashboard in a real browser: Debian's Chromium, headless, driven by
// playwright-core, against a real lathed and worker started by
// tests/http_gateway_test.cc (env: LATHE_HTTP_URL, LATHE_API_KEY,
// LATHE_DEMO_DIR, LATHE_ARTIFACTS for the screenshots, CHROMIUM).
// It signs in, starts a job through the REST API, watches its curves grow
// live on the job page, and checks the page against the API: the loss
// curve has one point per metrics event, the events and checkpoints are
// listed, the adapter can be downloaded; pause, resume and cancel work from
// their buttons; files and models pages; the job page on a phone.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import test from "node:test";
import { chromium } from "playwright-core";

const env = (k) => {
  assert.ok(process.env[k], `${k} must be set`);
  return process.env[k];
};
const url = env("LATHE_HTTP_URL");
const key = env("LATHE_API_KEY");
const shots = env("LATHE_ARTIFACTS");
fs.mkdirSync(shots, { recursive: true });
const auth = { Authorization: `Bearer ${key}` };

async function api(p, init = {}) {
  const res = await fetch(`${url}${p}`, { ...init, headers: { ...auth, ...(init.headers || {}) } });
  const body = await res.json();
  assert.ok(res.ok, `${p}: ${JSON.stringify(body)}`);
  return body;
}
async function allEvents(id) {
  const out = [];
  let after = "";
  for (;;) {
    const page = await api(`/v1/fine_tuning/jobs/${id}/events?limit=1000${after ? `&after=${after}` : ""}`);
    out.push(...page.data);
    if (!page.has_more) return out;
    after = page.data[page.data.length - 1].id;
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("the dashboard shows a job live and matches the API", async () => {
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", new Blob([fs.readFileSync(path.join(env("LATHE_DEMO_DIR"), "train.jsonl"))]), "train.jsonl");
  const file = await api("/v1/files", { method: "POST", body: form });
  const vform = new FormData();
  vform.append("purpose", "fine-tune");
  vform.append("file", new Blob([fs.readFileSync(path.join(env("LATHE_DEMO_DIR"), "valid.jsonl"))]), "valid.jsonl");
  const valid = await api("/v1/files", { method: "POST", body: vform });
  const create = (body) => api("/v1/fine_tuning/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  // The browser first: the jobs below must still be running when the page
  // looks at them, and launching it is the slow part.
  const browser = await chromium.launch({ executablePath: env("CHROMIUM"), args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${url}/`);

    // 2,400 steps at batch 1: still running when its page opens, on any
    // machine (240 steps once nearly finished first on a fast one).
    const job = await create({ model: "lathe-demo", training_file: file.id, validation_file: valid.id, suffix: "dash",
      method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 30, batch_size: 1, eval_every_steps: 300,
        checkpoint_every_steps: 600 } } } });
    // The job its buttons are tried on stays queued whatever the machine's
    // speed: a gang of two workers where there is one (a long job once
    // finished before its pause, and tens of thousands of events slow the
    // page down).
    const second = await create({ model: "lathe-demo", training_file: file.id, devices: 2,
      hyperparameters: { n_epochs: 1, batch_size: 4 } });

    // Sign in: a wrong key is refused on the form, the right one enters.
    await page.fill("#api-key", "sk-wrong");
    await page.click("#signin-form button");
    await page.waitForFunction(() => document.querySelector("#signin-error").textContent.length > 0);
    assert.match(await page.textContent("#signin-error"), /unknown|revoked|invalid|key/i);
    await page.fill("#api-key", key);
    await page.click("#signin-form button");
    await page.waitForSelector(`#jobs tr[data-job="${job.id}"]`);
    assert.equal(await page.locator(`#jobs tr[data-job="${second.id}"] .status`).textContent(), "queued");
    await page.screenshot({ path: path.join(shots, "jobs.png"), fullPage: true });
    // The status filter.
    await page.selectOption("#status-filter", "queued");
    await page.waitForFunction(() => {
      const s = [...document.querySelectorAll("#jobs .status")].map((e) => e.textContent);
      return s.length > 0 && s.every((t) => t === "queued");
    });
    await page.selectOption("#status-filter", "");
    await page.waitForSelector(`#jobs tr[data-job="${job.id}"]`);

    // The job page, opened while the job runs: its curve grows live.
    await page.click(`#jobs tr[data-job="${job.id}"] a`);
    await page.waitForSelector("#chart-loss[data-points]");
    await page.waitForFunction(() => document.querySelector("[data-page=jobs][data-live]"));
    const first = Number(await page.getAttribute("#chart-loss", "data-points"));
    let grew = false;
    for (let i = 0; i < 2400; i++) {  // up to 4 minutes, beside other tests' jobs
      const status = (await api(`/v1/fine_tuning/jobs/${job.id}`)).status;
      const now = Number(await page.getAttribute("#chart-loss", "data-points"));
      if (now > first && first >= 0 && status === "running") grew = true;
      if (status === "succeeded" || status === "failed") break;
      await sleep(100);
    }
    const done = await api(`/v1/fine_tuning/jobs/${job.id}`);
    assert.equal(done.status, "succeeded", JSON.stringify(done.error));
    assert.ok(grew, "the loss curve did not grow while the job ran");
    await page.waitForFunction(() => document.querySelector("[data-live=finished]"), null, { timeout: 30000 });
    await page.waitForSelector("#job-status [data-status=succeeded]");

    // The page against the API.
    const events = await allEvents(job.id);
    const metrics = events.filter((e) => e.type === "metrics");
    const valids = metrics.filter((e) => e.data.valid_loss !== undefined);
    assert.ok(metrics.length > 20);
    assert.ok(valids.length >= 2);
    assert.equal(Number(await page.getAttribute("#chart-loss", "data-points")), metrics.length);
    assert.equal(Number(await page.getAttribute("#chart-accuracy", "data-points")), metrics.length);
    assert.equal(Number(await page.getAttribute("#chart-lr", "data-points")), metrics.length);
    assert.equal(Number(await page.getAttribute("#chart-valid-loss", "data-points")), valids.length);
    assert.equal(await page.locator("#chart-loss canvas").count(), 1);  // drawn by uPlot
    assert.equal(await page.locator("#events tr[data-event]").count(), events.length);
    const checkpoints = (await api(`/v1/fine_tuning/jobs/${job.id}/checkpoints?limit=100`)).data;
    assert.ok(checkpoints.length >= 2);
    await page.waitForFunction((n) => document.querySelectorAll("#checkpoints tr[data-step]").length === n, checkpoints.length);
    const info = await page.textContent("#job-info");
    assert.ok(info.includes(done.fine_tuned_model), info);
    await page.waitForSelector('#downloads a[data-file="adapter_model.safetensors"]');
    const [download] = await Promise.all([page.waitForEvent("download"),
      page.click('#downloads a[data-file="adapter_model.safetensors"]')]);
    const saved = path.join(shots, "adapter_model.safetensors");
    await download.saveAs(saved);
    const listed = (await api(`/v1/fine_tuning/jobs/${job.id}/adapter`)).data.find((f) => f.name === "adapter_model.safetensors");
    assert.equal(fs.statSync(saved).size, listed.bytes);
    assert.ok(await page.locator("#job-cancel").isDisabled());
    await page.screenshot({ path: path.join(shots, "job.png"), fullPage: true });

    // Pause, resume and cancel from the buttons, on the queued job.
    await page.goto(`${url}/#/jobs/${second.id}`);
    await page.waitForSelector("#job-pause");
    assert.equal((await api(`/v1/fine_tuning/jobs/${second.id}`)).status, "queued");
    await page.click("#job-pause:not([disabled])");
    await page.waitForSelector("#job-status [data-status=paused]");
    assert.equal((await api(`/v1/fine_tuning/jobs/${second.id}`)).status, "paused");
    await page.click("#job-resume:not([disabled])");
    await page.waitForFunction(() => !document.querySelector("#job-status [data-status=paused]"), null, { timeout: 30000 });
    await page.click("#job-cancel:not([disabled])");
    await page.waitForSelector("#job-status [data-status=cancelled]");
    assert.equal((await api(`/v1/fine_tuning/jobs/${second.id}`)).status, "cancelled");

    // Files and models.
    await page.goto(`${url}/#/files`);
    await page.waitForSelector(`#files tr[data-file="${file.id}"]`);
    await page.goto(`${url}/#/models`);
    await page.waitForSelector(`#models tr[data-model="${done.fine_tuned_model}"]`);
    await page.waitForSelector('#models tr[data-model="lathe-demo"]');
    await page.screenshot({ path: path.join(shots, "models.png"), fullPage: true });

    // Readable on a phone: nothing wider than the screen.
    const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true,
      deviceScaleFactor: 2 });
    await phone.goto(`${url}/`);
    await phone.fill("#api-key", key);
    await phone.click("#signin-form button");
    await phone.waitForSelector(`#jobs tr[data-job="${job.id}"]`);
    await phone.goto(`${url}/#/jobs/${job.id}`);
    await phone.waitForFunction(() => document.querySelector("[data-live=finished]"), null, { timeout: 30000 });
    const overflow = await phone.evaluate(() => document.scrollingElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `the job page is ${overflow}px wider than the phone`);
    await phone.screenshot({ path: path.join(shots, "job-phone.png"), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
  }
});
