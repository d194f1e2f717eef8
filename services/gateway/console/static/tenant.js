// The tenant's pages: jobs (live), a job, an array, workflows, datasets, usage.
import { call, get, post, qs, subscribe, streamLines, upload, download, encodePath, ApiError } from "./api.js";
import { h, badge, when, bytes, table, json, countsBar, quotaBar, lineChart, barChart, dagSvg, STATES, FINAL } from "./ui.js";

const jobLink = (id) => h("a", { href: `#/jobs/${encodeURIComponent(id)}` }, id);
const problem = (e) => h("p", { class: "error", role: "alert" }, e instanceof ApiError ? `${e.status}: ${e.message}` : String(e));

function liveIndicator() {
  const el = h("span", { class: "live off", "aria-live": "polite" }, "connecting…");
  return { el, set: (on) => { el.className = on ? "live" : "live off"; el.textContent = on ? "● live" : "○ reconnecting"; } };
}

// ---------------------------------------------------------------- jobs
export async function jobsPage(main, ctx) {
  const filters = { state: ctx.params.get("state") || "", kernel: ctx.params.get("kernel") || "", label: ctx.params.get("label") || "" };
  const live = liveIndicator();
  const body = h("div", {});
  const kernels = await get("/v1/kernels").catch(() => []);
  const form = submitForm(kernels, (job) => { location.hash = `#/jobs/${encodeURIComponent(job.id)}`; });
  const filterForm = h("form", { class: "filters", "aria-label": "Filters", onsubmit: (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    location.hash = `#/jobs${qs({ state: f.get("state"), kernel: f.get("kernel"), label: f.get("label") })}`;
  } },
  h("label", {}, "State", h("select", { name: "state" }, h("option", { value: "" }, "any"),
    STATES.map((st) => h("option", { value: st, selected: st === filters.state }, st)))),
  h("label", {}, "Kernel", h("select", { name: "kernel" }, h("option", { value: "" }, "any"),
    kernels.map((k) => h("option", { value: k.name, selected: k.name === filters.kernel }, k.name)))),
  h("label", {}, "Label (k:v)", h("input", { name: "label", value: filters.label, placeholder: "run:7" })),
  h("button", { type: "submit" }, "Filter"));
  main.replaceChildren(h("h1", {}, "Jobs ", live.el), filterForm, body,
    h("details", { class: "panel", open: ctx.params.get("submit") === "1" || undefined }, h("summary", {}, "Submit a job"), form));

  let rows = [];
  const render = () => body.replaceChildren(table([
    { title: "Job", cell: (j) => jobLink(j.id) },
    { title: "Kernel", cell: (j) => j.kernel },
    { title: "State", cell: (j) => h("span", {}, badge(j.state), j.state_reason ? h("span", { class: "muted" }, ` ${j.state_reason}`) : null) },
    { title: "Progress", cell: (j) => j.array ? countsBar(j.array.counts) : (j.progress != null ? `${Math.round(100 * j.progress)}%` : "") },
    { title: "Labels", cell: (j) => Object.entries(j.labels || {}).map(([k, v]) => `${k}:${v}`).join(" ") },
    { title: "Created", cell: (j) => when(j.created_at) },
    { title: "Finished", cell: (j) => when(j.finished_at) },
  ], rows, { caption: "Newest first; updates live from the event stream.", empty: "No job matches." }));
  const load = async () => {
    try {
      rows = (await get(`/v1/jobs${qs({ ...filters, limit: 50 })}`)).items;
      render();
    } catch (e) { body.replaceChildren(problem(e)); }
  };
  await load();
  let pending = null;
  const reloadSoon = () => { if (!pending) pending = setTimeout(() => { pending = null; load(); }, 300); };
  ctx.onLeave(subscribe({ onStatus: live.set, onEvent: (type, d) => {
    if (type === "job.state" || type === "job.progress") {
      const id = d.array_id || d.job_id;
      const row = rows.find((r) => r.id === id);
      if (row && !d.array_id && type === "job.state") {
        if (filters.state && filters.state !== d.state) return reloadSoon();
        row.state = d.state; row.state_reason = d.reason ?? row.state_reason; render();
        if (FINAL.has(d.state)) reloadSoon();
      } else if (row && type === "job.progress" && !d.array_id) { row.progress = d.progress; render(); }
      else reloadSoon();
    }
  } }));
  ctx.onLeave(() => pending && clearTimeout(pending));
}

function submitForm(kernels, done) {
  const out = h("div", { "aria-live": "polite" });
  const first = kernels[0];
  const sel = h("select", { name: "kernel", id: "submit-kernel" }, kernels.map((k) => h("option", { value: k.name }, k.name)));
  const params = h("textarea", { name: "params", id: "submit-params", rows: "3" }, "{}");
  const example = { montecarlo_pi: { samples: 100000, seed: 1 }, histogram: { bins: 10, range: [0, 1] }, stencil2d: { iterations: 10 }, saxpy: { a: 2 }, nbody: { steps: 10, dt: 0.01, softening: 0.1 } };
  const fill = () => { params.value = JSON.stringify(example[sel.value] || {}); };
  sel.addEventListener("change", fill);
  if (first) fill();
  return h("form", { class: "inline", id: "submit-form", onsubmit: async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      const spec = { kernel: f.get("kernel"), device: f.get("device"), priority: Number(f.get("priority")),
        params: JSON.parse(f.get("params") || "{}"), inputs: JSON.parse(f.get("inputs") || "{}"), outputs: JSON.parse(f.get("outputs") || "{}") };
      const size = Number(f.get("array_size") || 0);
      if (size > 0) spec.array = { size, index_param: f.get("index_param") || undefined };
      const labels = (f.get("labels") || "").trim();
      if (labels) spec.labels = Object.fromEntries(labels.split(/\s+/).map((kv) => kv.split(":")));
      const job = await post("/v1/jobs", spec);
      out.replaceChildren(h("p", {}, "Submitted ", jobLink(job.id)));
      done(job);
    } catch (err) {
      out.replaceChildren(h("div", {}, err instanceof SyntaxError ? problem(`not JSON: ${err.message}`) : problem(err),
        err.problem && err.problem.errors ? json(err.problem.errors, "validation errors") : null));
    }
  } },
  h("label", { for: "submit-kernel" }, "Kernel", sel),
  h("label", {}, "Device", h("select", { name: "device" }, ["any", "cpu", "cuda"].map((d) => h("option", { value: d }, d)))),
  h("label", {}, "Priority", h("input", { name: "priority", type: "number", min: "0", max: "9", value: "5" })),
  h("label", { for: "submit-params" }, "Params (JSON)", params),
  h("label", {}, "Inputs (JSON)", h("textarea", { name: "inputs", rows: "2" }, "{}")),
  h("label", {}, "Outputs (JSON)", h("textarea", { name: "outputs", rows: "2" }, "{}")),
  h("label", {}, "Labels (k:v …)", h("input", { name: "labels" })),
  h("label", {}, "Array size", h("input", { name: "array_size", type: "number", min: "0", value: "0" })),
  h("label", {}, "Index param", h("input", { name: "index_param", placeholder: "seed" })),
  h("button", { type: "submit", id: "submit-button" }, "Submit"), out);
}

// ---------------------------------------------------------------- one job
export async function jobPage(main, ctx, id) {
  const live = liveIndicator();
  const head = h("div", {});
  const sections = h("div", {});
  const logPre = h("pre", { id: "job-log", tabindex: "0", "aria-label": "job log" });
  main.replaceChildren(h("h1", {}, "Job ", h("code", {}, id), " ", live.el), head, sections);
  const enc = encodeURIComponent(id);
  let job;
  const refresh = async () => {
    try {
      job = await get(`/v1/jobs/${enc}`);
    } catch (e) { head.replaceChildren(problem(e)); return; }
    const [events, attempts] = await Promise.all([
      get(`/v1/jobs/${enc}/events`).catch(() => ({ items: [] })),
      get(`/v1/jobs/${enc}/attempts`).catch(() => ({ items: [] })),
    ]);
    const canCancel = !FINAL.has(job.state);
    head.replaceChildren(h("div", { class: "panel" },
      h("p", {}, badge(job.state), job.state_reason ? ` ${job.state_reason}` : "", " · ", job.kernel, " on ", job.assigned_device || job.device,
        job.worker ? ` · worker ${job.worker}` : "", job.array_id ? h("span", {}, " · element of ", jobLink(job.array_id)) : null,
        job.workflow_id ? h("span", {}, " · workflow ", h("a", { href: `#/workflows/${encodeURIComponent(job.workflow_id)}` }, job.workflow_id)) : null),
      job.progress != null ? h("p", {}, h("label", {}, "Progress", h("progress", { max: "1", value: String(job.progress) })), ` ${Math.round(job.progress * 100)}%`) : null,
      h("p", { class: "muted" }, `created ${when(job.created_at)} · started ${when(job.started_at)} · finished ${when(job.finished_at)} · attempts ${job.attempts}`),
      job.error ? h("p", { class: "error" }, job.error) : null,
      canCancel ? h("button", { class: "danger", type: "button", onclick: async () => { try { await post(`/v1/jobs/${enc}/cancel`); refresh(); } catch (e) { head.append(problem(e)); } } }, "Cancel") : null));
    const parts = [];
    if (job.array) {
      const el = await get(`/v1/jobs/${enc}/elements?limit=100`).catch(() => ({ items: [] }));
      parts.push(h("h2", {}, `Array of ${job.array.size}`), countsBar(job.array.counts),
        table([{ title: "#", cell: (e) => String(e.array_index) }, { title: "Element", cell: (e) => jobLink(e.id) },
          { title: "State", cell: (e) => badge(e.state) }, { title: "Finished", cell: (e) => when(e.finished_at) }], el.items,
        { caption: el.next_cursor ? "first 100 elements" : undefined }));
    }
    parts.push(h("div", { class: "grid2" },
      h("section", {}, h("h2", {}, "Timeline"), table([
        { title: "At", cell: (e) => when(e.at) }, { title: "State", cell: (e) => badge(e.state) },
        { title: "Reason", cell: (e) => e.reason || "" }, { title: "Attempt", cell: (e) => e.attempt ?? "" }, { title: "Worker", cell: (e) => e.worker || "" },
      ], events.items)),
      h("section", {}, h("h2", {}, "Attempts"), table([
        { title: "#", cell: (a) => String(a.attempt) }, { title: "Worker", cell: (a) => a.worker || "" }, { title: "Device", cell: (a) => a.device || "" },
        { title: "CPU s", cell: (a) => a.cpu_seconds ?? "" }, { title: "Outcome", cell: (a) => a.outcome || "" }, { title: "Error", cell: (a) => a.error || "" },
      ], attempts.items))));
    const outputs = Object.entries(job.outputs || {});
    if (outputs.length) {
      parts.push(h("h2", {}, "Outputs"), table([{ title: "Name", cell: (o) => o[0] }, { title: "Dataset", cell: (o) => datasetLink(o[1]) },
        { title: "", cell: (o) => h("button", { class: "secondary", type: "button", onclick: () => download(o[1]).catch((e) => alert(e.message)) }, "Download") }], outputs));
    }
    if (job.result) parts.push(h("h2", {}, "Result"), json(job.result, "result"));
    if (job.receipt) parts.push(h("h2", {}, "Receipt"), json(job.receipt, "receipt"));
    if (!job.array) parts.push(h("h2", {}, "Log"), logPre);
    sections.replaceChildren(...parts);
  };
  await refresh();
  if (!job) return;
  const ctl = new AbortController();
  ctx.onLeave(() => ctl.abort());
  if (!job.array) {
    streamLines(`/v1/jobs/${enc}/log?follow=1`, ctl.signal, (line) => {
      logPre.append(line + "\n");
      logPre.scrollTop = logPre.scrollHeight;
    }).catch((e) => { if (!ctl.signal.aborted) logPre.append(`[log: ${e.message}]\n`); });
  }
  let pending = null;
  ctx.onLeave(subscribe({ job: id, onStatus: live.set, onEvent: () => {
    if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 250);
  } }));
  ctx.onLeave(() => pending && clearTimeout(pending));
}

const datasetLink = (name) => h("a", { href: `#/datasets/${encodePath(name)}` }, name);

// ---------------------------------------------------------------- workflows
export async function workflowsPage(main, ctx) {
  const live = liveIndicator();
  const body = h("div", {});
  main.replaceChildren(h("h1", {}, "Workflows ", live.el), body);
  const load = async () => {
    try {
      const list = await get("/v1/workflows?limit=50");
      body.replaceChildren(table([
        { title: "Workflow", cell: (w) => h("a", { href: `#/workflows/${encodeURIComponent(w.id)}` }, w.name || w.id) },
        { title: "State", cell: (w) => badge(w.state) }, { title: "Steps", cell: (w) => String(Object.keys(w.steps || {}).length) },
        { title: "Created", cell: (w) => when(w.created_at) }, { title: "Finished", cell: (w) => when(w.finished_at) },
      ], list.items));
    } catch (e) { body.replaceChildren(problem(e)); }
  };
  await load();
  ctx.onLeave(subscribe({ onStatus: live.set, onEvent: (type) => { if (type === "workflow.state") load(); } }));
}

export async function workflowPage(main, ctx, id) {
  const live = liveIndicator();
  const body = h("div", {});
  main.replaceChildren(h("h1", {}, "Workflow ", h("code", {}, id), " ", live.el), body);
  const enc = encodeURIComponent(id);
  const load = async () => {
    try {
      const wf = await get(`/v1/workflows/${enc}`);
      const steps = Object.entries(wf.steps || {});
      const jobs = await Promise.all(steps.map(([, jid]) => get(`/v1/jobs/${encodeURIComponent(jid)}`).catch(() => null)));
      const stepOf = new Map(steps.map(([name, jid]) => [jid, name]));
      const nodes = steps.map(([name, jid], i) => ({ id: jid, label: name, state: jobs[i]?.state, href: `#/jobs/${encodeURIComponent(jid)}` }));
      const edges = [];
      jobs.forEach((j) => (j?.depends_on || []).forEach((d) => {
        const from = String(d.job).split(":")[0];
        if (stepOf.has(from)) edges.push({ from, to: j.id, label: d.condition });
      }));
      body.replaceChildren(h("p", {}, badge(wf.state), ` ${wf.name} · created ${when(wf.created_at)}`),
        h("div", { class: "panel" }, dagSvg(nodes, edges)),
        table([{ title: "Step", cell: (n) => n.label }, { title: "Job", cell: (n) => jobLink(n.id) }, { title: "State", cell: (n) => badge(n.state || "") }], nodes),
        ...(FINAL.has(wf.state) ? [] : [h("button", { class: "danger", type: "button", onclick: async () => { await post(`/v1/workflows/${enc}/cancel`).catch(() => null); load(); } }, "Cancel workflow")]));
    } catch (e) { body.replaceChildren(problem(e)); }
  };
  await load();
  let pending = null;
  ctx.onLeave(subscribe({ job: id, onStatus: live.set, onEvent: () => { if (!pending) pending = setTimeout(() => { pending = null; load(); }, 300); } }));
}

// ---------------------------------------------------------------- datasets
export async function datasetsPage(main, ctx, name) {
  const list = h("div", {});
  const detail = h("div", { "aria-live": "polite" });
  const prog = h("progress", { max: "1", value: "0", id: "upload-progress", "aria-label": "upload progress" });
  const status = h("span", { id: "upload-status", "aria-live": "polite" });
  const form = h("form", { class: "inline", id: "upload-form", onsubmit: async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const file = f.get("file");
    const dest = (f.get("name") || "").trim() || (file && file.name);
    if (!file || !file.size && !file.name) { status.textContent = "choose a file"; return; }
    status.textContent = "uploading…";
    try {
      const ds = await upload(dest, file, (p) => { prog.value = p; });
      status.textContent = `uploaded ${ds.name} (${bytes(ds.size)})`;
      load();
    } catch (err) { status.replaceChildren(problem(err)); }
  } },
  h("label", {}, "File", h("input", { type: "file", name: "file", id: "upload-file" })),
  h("label", {}, "Name", h("input", { name: "name", id: "upload-name", placeholder: "experiments/plate.npy" })),
  h("button", { type: "submit" }, "Upload"), prog, status);
  main.replaceChildren(h("h1", {}, "Datasets"), h("div", { class: "panel" }, form), detail, list);
  const load = async () => {
    try {
      const items = (await get("/v1/datasets?limit=200")).items;
      list.replaceChildren(table([
        { title: "Name", cell: (d) => datasetLink(d.name) }, { title: "Size", cell: (d) => bytes(d.size) },
        { title: "Tier", cell: (d) => d.tier }, { title: "Produced by", cell: (d) => d.produced_by ? jobLink(d.produced_by) : "" },
        { title: "Updated", cell: (d) => when(d.updated_at) },
        { title: "", cell: (d) => h("button", { class: "secondary", type: "button", "aria-label": `Download ${d.name}`, onclick: () => download(d.name).catch((e) => alert(e.message)) }, "Download") },
      ], items));
    } catch (e) { list.replaceChildren(problem(e)); }
  };
  if (name) {
    try {
      const meta = await get(`/v1/datasets/${encodePath(name)}?meta=1`);
      detail.replaceChildren(h("section", { class: "panel" }, h("h2", {}, meta.name),
        h("p", {}, `${bytes(meta.size)} · ${meta.tier} · ${meta.checksum}`),
        h("p", {}, "Lineage: ", meta.produced_by ? h("span", {}, "produced by ", jobLink(meta.produced_by)) : "uploaded (no producing job)"),
        h("button", { type: "button", onclick: () => download(meta.name).catch((e) => alert(e.message)) }, "Download")));
    } catch (e) { detail.replaceChildren(problem(e)); }
  }
  await load();
}

// ---------------------------------------------------------------- usage
const samples = []; // {t, usage} of /v1/tenant, kept while the page is open

export async function usagePage(main, ctx) {
  const now = h("div", {});
  const over = h("div", {});
  const daily = h("div", {});
  main.replaceChildren(h("h1", {}, "Usage"), h("h2", {}, "Quotas now"), now, h("h2", {}, "Over time (sampled while this page is open)"), over,
    h("h2", {}, "CPU seconds per day (30 days)"), daily);
  const sample = async () => {
    try {
      const t = await get("/v1/tenant");
      samples.push({ t: new Date(), usage: t.usage });
      while (samples.length > 360) samples.shift();
      const fmt = { storage_bytes: bytes };
      now.replaceChildren(...Object.entries(t.usage).filter(([, q]) => q.used !== undefined && q.used !== null)
        .map(([k, q]) => quotaBar(k, q, fmt[k])));
      over.replaceChildren(h("div", { class: "grid2" }, ["max_running_jobs", "max_queued_jobs", "cpu_seconds_per_day", "storage_bytes"].map((k) =>
        lineChart([{ name: `${k} %`, points: samples.map((s) => ({ t: s.t, v: s.usage[k] && s.usage[k].limit ? (100 * (s.usage[k].used || 0)) / s.usage[k].limit : 0 })) }],
          { title: `${k}: percent of quota`, max: 100 }))));
    } catch (e) { now.replaceChildren(problem(e)); }
  };
  await sample();
  const timer = setInterval(sample, 5000);
  ctx.onLeave(() => clearInterval(timer));
  try {
    const since = new Date(Date.now() - 30 * 86400e3).toISOString().replace(/\.\d+Z$/, "Z");
    const u = await get(`/v1/usage${qs({ since, group_by: "day" })}`);
    daily.replaceChildren(barChart((u.groups || []).map((g) => ({ label: g.key || "", v: g.cpu_seconds })), { title: "CPU seconds per day" }),
      h("p", { class: "muted" }, `${u.cpu_seconds.toFixed(1)} CPU s, ${u.gpu_seconds.toFixed(1)} GPU s, ${bytes(u.storage_bytes)} stored, ${bytes(u.bytes_moved)} moved`));
  } catch (e) { daily.replaceChildren(problem(e)); }
}
