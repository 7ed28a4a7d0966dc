// Lathe's dashboard: plain browser JavaScript over the OpenAI-compatible
// REST API (/v1) that lathed serves beside it, with uPlot for the curves.
// The API key stays in this tab (sessionStorage) and is sent as
// "Authorization: Bearer"; nothing else is stored.
"use strict";

const KEY = "lathe.api_key";
const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
};

function apiKey() { return sessionStorage.getItem(KEY); }
function headers() { return { Authorization: `Bearer ${apiKey()}` }; }

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.param = body?.error?.param ?? null;
  }
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    if (res.status === 401) signOut("Your key was refused: " + (body?.error?.message || "unauthenticated"));
    throw new ApiError(res.status, body);
  }
  return body;
}

// Every page of a cursor listing (OpenAI's `after`), up to `max` items.
async function listAll(path, params = {}, max = 2000) {
  const out = [];
  let after = null;
  for (;;) {
    const q = new URLSearchParams({ ...params, ...(after ? { after } : {}) });
    const page = await api(`${path}?${q}`);
    out.push(...page.data);
    if (!page.has_more || page.data.length === 0 || out.length >= max) return out;
    after = page.data[page.data.length - 1].id;
  }
}

const fmtTime = (s) => (s ? new Date(s * 1000).toLocaleString() : "—");
function fmtEta(seconds) {
  if (!seconds || seconds <= 0) return "—";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  const u = ["KiB", "MiB", "GiB", "TiB"];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return `${n.toFixed(1)} ${u[i]}`;
}
const num = (v, d = 4) => (v === undefined || v === null ? "—" : Number(v).toFixed(d));
const statusBadge = (s) => el("span", { class: `status ${s}`, "data-status": s }, s);
const progressOf = (job) => {
  const p = job.lathe?.progress || {};
  return { done: Number(p.steps_done || 0), total: Number(p.steps_total || 0),
           remaining: Number(p.seconds_remaining || 0) };
};
function progressBar(job) {
  const p = progressOf(job);
  const pct = p.total > 0 ? Math.min(100, (100 * p.done) / p.total) : (job.status === "succeeded" ? 100 : 0);
  return el("div", {}, el("div", { class: "bar" }, el("div", { style: `width:${pct}%` })),
            el("span", { class: "muted" }, p.total ? `${p.done}/${p.total} steps` : ""));
}

// Downloads need the key, so they are fetched and handed to the browser.
async function download(url, name) {
  const res = await fetch(url, { headers: headers() });
  if (!res.ok) { alert(`Download failed: HTTP ${res.status}`); return; }
  const blob = await res.blob();
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  a.remove();
}

let stopPage = () => {};

// --- Pages -----------------------------------------------------------------

async function jobsPage(root) {
  const status = el("select", { id: "status-filter", "aria-label": "Status" },
    ["", "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
      .map((s) => el("option", { value: s }, s || "any status")));
  const text = el("input", { id: "text-filter", placeholder: "Filter by id, model, suffix", "aria-label": "Filter" });
  const body = el("tbody");
  root.append(el("h1", {}, "Fine-tuning jobs"),
    el("div", { class: "filters" }, status, text),
    el("table", { id: "jobs" }, el("thead", {}, el("tr", {},
      el("th", {}, "Job"), el("th", { class: "wide" }, "Model"), el("th", {}, "Status"),
      el("th", {}, "Progress"), el("th", {}, "ETA"), el("th", { class: "wide" }, "Created"))), body));
  let jobs = [];
  const render = () => {
    const t = text.value.trim().toLowerCase();
    body.replaceChildren(...jobs
      .filter((j) => !t || [j.id, j.model, j.user_provided_suffix || "", j.fine_tuned_model || ""].some((v) => v.toLowerCase().includes(t)))
      .map((j) => el("tr", { "data-job": j.id },
        el("td", {}, el("a", { href: `#/jobs/${j.id}` }, j.id)),
        el("td", { class: "wide" }, j.model),
        el("td", {}, statusBadge(j.status)),
        el("td", {}, progressBar(j)),
        el("td", {}, j.status === "running" ? fmtEta(progressOf(j).remaining) : "—"),
        el("td", { class: "wide" }, fmtTime(j.created_at)))));
    if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No jobs.")));
  };
  const load = async () => {
    jobs = await listAll("/v1/fine_tuning/jobs", status.value ? { status: status.value, limit: 100 } : { limit: 100 });
    render();
  };
  status.addEventListener("change", load);
  text.addEventListener("input", render);
  await load();
  const timer = setInterval(() => load().catch(() => {}), 3000);
  return () => clearInterval(timer);
}

function chart(title, id, color) {
  const box = el("div", { class: "chart", id, "data-points": "0" }, el("h3", {}, title));
  const state = { xs: [], ys: [], plot: null };
  const draw = () => {
    box.dataset.points = String(state.xs.length);
    const width = Math.max(260, box.clientWidth - 16);
    if (!state.plot) {
      state.plot = new uPlot({
        width, height: 180,
        scales: { x: { time: false } },
        series: [{ label: "step" }, { label: title, stroke: color, width: 2, points: { show: state.xs.length < 60 } }],
        axes: [{ label: "step" }, {}],
        legend: { show: true },
      }, [state.xs, state.ys], box);
    } else {
      state.plot.setData([state.xs, state.ys]);
    }
  };
  return { box, add(x, y) { state.xs.push(x); state.ys.push(y); }, draw, state };
}

async function jobPage(root, id) {
  const controller = new AbortController();
  let job = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}`);
  const info = el("dl", { class: "kv", id: "job-info" });
  const actions = el("div", { class: "actions" });
  const loss = chart("Training loss", "chart-loss", "#3355cc");
  const acc = chart("Token accuracy", "chart-accuracy", "#067647");
  const vloss = chart("Validation loss", "chart-valid-loss", "#b54708");
  const lr = chart("Learning rate", "chart-lr", "#6941c6");
  const eventsBody = el("tbody");
  const checkpointsBody = el("tbody");
  const downloads = el("div", { id: "downloads" });
  // Updates go to this page's own elements: a late one, after the user
  // went to another page, lands in detached nodes, never on that page.
  const status = el("span", { id: "job-status" }, statusBadge(job.status));
  root.append(el("h1", {}, id, " ", status), actions, info,
    el("h2", {}, "Curves"), el("div", { class: "charts" }, loss.box, acc.box, vloss.box, lr.box),
    el("h2", {}, "Checkpoints"),
    el("table", { id: "checkpoints" }, el("thead", {}, el("tr", {}, el("th", {}, "Step"), el("th", {}, "Train loss"),
      el("th", {}, "Valid loss"), el("th", { class: "wide" }, "Token accuracy"), el("th", {}, "Files"))), checkpointsBody),
    el("h2", {}, "Adapter"), downloads,
    el("h2", {}, "Events"),
    el("div", { class: "events" }, el("table", { id: "events" }, el("thead", {}, el("tr", {}, el("th", { class: "wide" }, "Time"),
      el("th", {}, "Level"), el("th", {}, "Message"))), eventsBody)));

  const renderInfo = () => {
    const p = progressOf(job);
    const rows = [["Model", job.model], ["Fine-tuned model", job.fine_tuned_model || "—"],
      ["Method", job.method?.type], ["Training file", job.training_file], ["Validation file", job.validation_file || "—"],
      ["Epochs", job.hyperparameters?.n_epochs], ["Batch size", job.hyperparameters?.batch_size],
      ["LR multiplier", job.hyperparameters?.learning_rate_multiplier],
      ["Progress", p.total ? `${p.done}/${p.total} steps` : "—"],
      ["ETA", job.status === "running" ? fmtEta(p.remaining) : "—"],
      ["Created", fmtTime(job.created_at)], ["Finished", fmtTime(job.finished_at)],
      ["Error", job.error ? `${job.error.code}: ${job.error.message}` : "—"]];
    info.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "—")]));
    status.replaceChildren(statusBadge(job.status));
    // The buttons are made once and only enabled or disabled here: the live feed re-renders this block
    // many times a second while a job trains, and a button replaced under the pointer loses its click.
    if (!actions.firstChild) {
      actions.replaceChildren(...["cancel", "pause", "resume"].map((name) => el("button", {
        type: "button", id: `job-${name}`, disabled: "",
        onclick: async () => {
          try { job = await api(`/v1/fine_tuning/jobs/${id}/${name}`, { method: "POST" }); renderInfo(); }
          catch (e) { alert(e.message); }
        } }, name[0].toUpperCase() + name.slice(1))));
    }
    const live = ["validating_files", "queued", "running"].includes(job.status);
    const enabled = { cancel: live || job.status === "paused", pause: job.status === "queued" || job.status === "running",
      resume: job.status === "paused" };
    for (const [name, on] of Object.entries(enabled)) actions.querySelector(`#job-${name}`).disabled = !on;
  };
  const renderDownloads = async () => {
    if (job.status !== "succeeded") { downloads.replaceChildren(el("p", { class: "muted" }, "When the job succeeds.")); return; }
    try {
      const files = await api(`/v1/fine_tuning/jobs/${id}/adapter`);
      downloads.replaceChildren(el("ul", {}, files.data.map((f) => el("li", {},
        el("a", { href: "#", "data-file": f.name, onclick: (e) => { e.preventDefault(); download(f.url, f.name); } }, f.name),
        ` ${fmtBytes(f.bytes)} `, el("code", { class: "muted wide" }, f.sha256.slice(0, 12))))));
    } catch (e) { downloads.replaceChildren(el("p", { class: "error" }, e.message)); }
  };
  const renderCheckpoints = async () => {
    const list = await listAll(`/v1/fine_tuning/jobs/${id}/checkpoints`, { limit: 100 });
    checkpointsBody.replaceChildren(...list.map((c) => el("tr", { "data-step": c.step_number },
      el("td", { class: "num" }, c.step_number), el("td", { class: "num" }, num(c.metrics.train_loss)),
      el("td", { class: "num" }, num(c.metrics.valid_loss)), el("td", { class: "num wide" }, num(c.metrics.train_mean_token_accuracy, 3)),
      el("td", {}, el("a", { href: "#", onclick: async (e) => {
        e.preventDefault();
        const files = await api(`/v1/fine_tuning/jobs/${id}/checkpoints/${c.step_number}/files`);
        for (const f of files.data) await download(f.url, `step-${c.step_number}-${f.name}`);
      } }, "download")))));
    if (!list.length) checkpointsBody.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "None yet.")));
  };
  const addEvent = (e) => {
    eventsBody.prepend(el("tr", { "data-event": e.id }, el("td", { class: "wide" }, fmtTime(e.created_at)),
      el("td", {}, e.level), el("td", {}, e.message)));
    if (e.type === "metrics" && e.data) {
      const d = e.data;
      loss.add(d.step, d.train_loss);
      acc.add(d.step, d.train_mean_token_accuracy);
      lr.add(d.step, d.learning_rate);
      if (d.valid_loss !== undefined) vloss.add(d.step, d.valid_loss);
    }
  };
  const drawAll = () => [loss, acc, vloss, lr].forEach((c) => c.draw());
  renderInfo();
  // History first, then the live feed from the last event seen.
  const history = await listAll(`/v1/fine_tuning/jobs/${id}/events`, { limit: 1000 }, 1e9);
  history.forEach(addEvent);
  drawAll();
  await Promise.all([renderCheckpoints(), renderDownloads()]);
  let after = history.length ? history[history.length - 1].id : "";
  root.dataset.live = "following";
  (async () => {
    const decoder = new TextDecoder();
    while (!controller.signal.aborted) {
      let res;
      try {
        res = await fetch(`/v1/fine_tuning/jobs/${id}/events?stream=true${after ? `&after=${after}` : ""}`,
                          { headers: headers(), signal: controller.signal });
      } catch { return; }
      if (!res.ok) { root.dataset.live = "error"; return; }
      const reader = res.body.getReader();
      let buf = "";
      let finished = false;
      for (;;) {
        let chunk;
        try { chunk = await reader.read(); } catch { break; }
        if (chunk.done) break;
        buf += decoder.decode(chunk.value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let type = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) type = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (type === "event") {
            const e = JSON.parse(data);
            after = e.id;
            addEvent(e);
            drawAll();
            if (e.type === "metrics") renderInfo();
          } else if (type === "job") {
            // The feed's copy may be older than what a button just got
            // back: show the job as it is now.
            const now = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}`).catch(() => JSON.parse(data));
            if (controller.signal.aborted) return;
            job = now;
            renderInfo();
            renderCheckpoints().catch(() => {});
            renderDownloads();
          } else if (type === "done") {
            finished = true;
          }
        }
      }
      if (finished) { root.dataset.live = "finished"; return; }
    }
  })();
  const refresh = setInterval(() => renderCheckpoints().catch(() => {}), 5000);
  return () => { controller.abort(); clearInterval(refresh); };
}

async function filesPage(root) {
  const files = await listAll("/v1/files", { limit: 100 });
  root.append(el("h1", {}, "Files"), el("table", { id: "files" }, el("thead", {}, el("tr", {},
    el("th", {}, "File"), el("th", {}, "Name"), el("th", { class: "wide" }, "Size"), el("th", { class: "wide" }, "Examples"),
    el("th", { class: "wide" }, "Uploaded"), el("th", {}, ""))),
    el("tbody", {}, files.map((f) => el("tr", { "data-file": f.id }, el("td", {}, el("code", {}, f.id)), el("td", {}, f.filename),
      el("td", { class: "wide num" }, fmtBytes(f.bytes)), el("td", { class: "wide num" }, f.lathe?.line_count ?? "—"),
      el("td", { class: "wide" }, fmtTime(f.created_at)),
      el("td", {}, el("a", { href: "#", onclick: (e) => { e.preventDefault(); download(`/v1/files/${f.id}/content`, f.filename); } }, "download")))))));
}

async function modelsPage(root) {
  const models = (await api("/v1/models")).data;
  root.append(el("h1", {}, "Models"), el("table", { id: "models" }, el("thead", {}, el("tr", {},
    el("th", {}, "Model"), el("th", {}, "Kind"), el("th", { class: "wide" }, "Base"), el("th", { class: "wide" }, "Created"))),
    el("tbody", {}, models.map((m) => el("tr", { "data-model": m.id }, el("td", {}, el("code", {}, m.id)),
      el("td", {}, m.lathe?.kind || m.owned_by), el("td", { class: "wide" }, m.lathe?.base_model || "—"),
      el("td", { class: "wide" }, fmtTime(m.created)))))));
}

// --- Shell -----------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(KEY);
  $("#signin-error").textContent = message || "";
  route();
}

// route() calls so far: a page that finishes loading after a newer route()
// has replaced it is stopped at once.
let routes = 0;

async function route() {
  const current = ++routes;
  stopPage();
  stopPage = () => {};
  const signedIn = !!apiKey();
  $("#signin").hidden = signedIn;
  $("#nav").hidden = !signedIn;
  const root = el("div");
  $("#page").replaceChildren(root);
  if (!signedIn) return;
  const [, page = "jobs", id] = (location.hash || "#/jobs").split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  root.dataset.page = page;
  try {
    let stop;
    if (page === "jobs" && id) stop = await jobPage(root, decodeURIComponent(id));
    else if (page === "files") stop = await filesPage(root);
    else if (page === "models") stop = await modelsPage(root);
    else stop = await jobsPage(root);
    if (current !== routes) {
      if (stop) stop();
      return;
    }
    if (stop) stopPage = stop;
    root.dataset.ready = "true";
  } catch (e) {
    root.append(el("p", { class: "error", role: "alert" }, e.message));
  }
}

$("#signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const key = $("#api-key").value.trim();
  sessionStorage.setItem(KEY, key);
  try {
    await api("/v1/models");
    $("#signin-error").textContent = "";
    $("#api-key").value = "";
    route();
  } catch (err) {
    sessionStorage.removeItem(KEY);
    $("#signin-error").textContent = err.message;
  }
});
$("#signout").addEventListener("click", () => signOut(""));
window.addEventListener("hashchange", route);
route();
