// The platform admin's pages: tenants and keys, pools and the autoscaler, dead letters.
import { get, post, patch, del, ApiError } from "./api.js";
import { h, when, table, json, lineChart } from "./ui.js";

const problem = (e) => h("p", { class: "error", role: "alert" }, e instanceof ApiError ? `${e.status}: ${e.message}` : String(e));
// The tenants whose keys are shown (their "Keys" opened): open again after a reload of the list.
const shown = new Set();

export async function tenantsPage(main) {
  const body = h("div", {});
  const out = h("div", { "aria-live": "polite", id: "admin-out" });
  const create = h("form", { class: "inline", id: "tenant-form", onsubmit: async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      const t = await post("/v1/tenants", { name: f.get("name"), weight: Number(f.get("weight") || 1) });
      out.replaceChildren(h("p", {}, `Tenant ${t.name} created (${t.id}).`));
      load();
    } catch (err) { out.replaceChildren(problem(err)); }
  } },
  h("label", {}, "Name", h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]*" })),
  h("label", {}, "Weight", h("input", { name: "weight", type: "number", min: "1", max: "1000", value: "1" })),
  h("button", { type: "submit" }, "Create tenant"));
  const revoke = h("form", { class: "inline", id: "revoke-form", onsubmit: async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    await revokeKey(f.get("tenant"), f.get("key"), out);
    load();
  } },
  h("label", {}, "Tenant id", h("input", { name: "tenant", required: true })),
  h("label", {}, "Key id", h("input", { name: "key", required: true })),
  h("button", { type: "submit", class: "danger" }, "Revoke key"));
  main.replaceChildren(h("h1", {}, "Tenants and keys"), h("div", { class: "panel" }, create, revoke), out, body);
  const load = async () => {
    try {
      const tenants = (await get("/v1/tenants?limit=200")).items;
      body.replaceChildren(table([
        { title: "Tenant", cell: (t) => h("span", {}, h("strong", {}, t.name), h("br"), h("code", { class: "muted" }, t.id)) },
        { title: "Weight", cell: (t) => String(t.weight) },
        { title: "Suspension", cell: (t) => h("button", { class: "secondary", type: "button", "aria-label": `${t.suspended ? "Resume" : "Suspend"} ${t.name}`, title: t.suspended ? "suspended" : "active", onclick: async () => {
          try { await patch(`/v1/tenants/${t.id}`, { suspended: !t.suspended }); load(); } catch (err) { out.replaceChildren(problem(err)); }
        } }, t.suspended ? "Resume" : "Suspend") },
        { title: "Quotas", cell: (t) => Object.entries(t.quotas || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "defaults" },
        { title: "Keys", cell: (t) => keysOf(t, out, load) },
        { title: "New key", cell: (t) => h("form", { class: "inline", onsubmit: async (e) => {
          e.preventDefault();
          const f = new FormData(e.target);
          try {
            const scopes = f.getAll("scope");
            const k = await post(`/v1/tenants/${t.id}/keys`, { name: f.get("name") || "console", ...(scopes.length ? { scopes } : {}) });
            shown.add(t.id);
            out.replaceChildren(h("div", { class: "panel" }, h("p", {}, `Key ${k.name} for ${t.name} (id ${k.id}); shown once, copy it now:`),
              h("p", { class: "key-once", id: "new-key" }, k.key)));
            load();
          } catch (err) { out.replaceChildren(problem(err)); }
        } }, h("label", {}, "Key name", h("input", { name: "name", value: "console", "aria-label": `key name for ${t.name}` })),
        h("button", { type: "submit", "aria-label": `Create key for ${t.name}` }, "Create key")) },
      ], tenants));
    } catch (e) { body.replaceChildren(problem(e)); }
  };
  await load();
}

// A tenant's keys (GET /v1/tenants/{id}/keys: revoked ones too, never a secret), read when
// its "Keys" is opened; an active one has its Revoke button.
function keysOf(t, out, load) {
  const list = h("div", {}, h("p", { class: "muted" }, "loading…"));
  const fill = async () => {
    try {
      const keys = (await get(`/v1/tenants/${encodeURIComponent(t.id)}/keys?limit=100`)).items;
      list.replaceChildren(keys.length ? h("ul", { class: "keys" }, keys.map((k) => h("li", { "data-key": k.id },
        h("strong", {}, k.name), ` (${k.prefix}…) `, h("span", { class: "muted" }, k.scopes.length === 4 ? "all scopes" : k.scopes.join(", ")),
        ` · made ${when(k.created_at)} · `,
        k.state === "active"
          ? h("button", { class: "danger", type: "button", "aria-label": `Revoke key ${k.name} (${k.prefix}…) of ${t.name}`,
            onclick: async () => { await revokeKey(t.id, k.id, out); load(); } }, "Revoke")
          : h("span", { class: "revoked" }, `revoked ${when(k.revoked_at)}`)))) : h("p", { class: "muted" }, "no keys"));
    } catch (err) { list.replaceChildren(problem(err)); }
  };
  const details = h("details", { ontoggle: () => { if (details.open) { shown.add(t.id); fill(); } else shown.delete(t.id); } },
    h("summary", { "aria-label": `Keys of ${t.name}` }, "Keys"), list);
  if (shown.has(t.id)) details.open = true;  // its toggle event reads them
  return details;
}

async function revokeKey(tenant, key, out) {
  try {
    await del(`/v1/tenants/${encodeURIComponent(tenant)}/keys/${encodeURIComponent(key)}`);
    out.replaceChildren(h("p", { id: "revoked" }, `Key ${key} revoked.`));
  } catch (e) { out.replaceChildren(problem(e)); }
}

export async function poolsPage(main, ctx) {
  const body = h("div", {});
  main.replaceChildren(h("h1", {}, "Pools and the autoscaler"), body);
  const load = async () => {
    try {
      const pools = (await get("/v1/admin/pools")).items;
      body.replaceChildren(...pools.map((p) => h("section", { class: "panel" },
        h("h2", {}, `Pool ${p.pool}`),
        h("p", {}, p.autoscaling
          ? `${p.backend}: ${p.current_workers} workers (desired ${p.desired_workers}, ${p.min_workers}–${p.max_workers}); demand ${p.queued_jobs} queued, ${p.running_jobs} running, ${p.held_jobs} held · updated ${when(p.updated_at)}`
          : `not autoscaled; ${p.live_workers} live workers`),
        p.decisions && p.decisions.length ? h("div", {},
          lineChart([
            { name: "workers", points: [...p.decisions].reverse().map((d) => ({ t: new Date(d.at), v: d.to })) },
            { name: "demand", points: [...p.decisions].reverse().map((d) => ({ t: new Date(d.at), v: d.demand })) },
          ], { title: `${p.pool}: workers and demand at each decision` }),
          table([{ title: "At", cell: (d) => when(d.at) }, { title: "Action", cell: (d) => d.action }, { title: "From → to", cell: (d) => `${d.from} → ${d.to}` },
            { title: "Demand", cell: (d) => String(d.demand) }, { title: "Reason", cell: (d) => d.reason || "" }], p.decisions, { caption: "decisions, newest first" })) : null,
        h("h2", {}, "Live workers"),
        table([{ title: "Worker", cell: (w) => w.id }, { title: "Slots", cell: (w) => String(w.concurrency) }, { title: "Running", cell: (w) => String(w.running_jobs) },
          { title: "Stopping", cell: (w) => (w.stopping ? "yes" : "no") }, { title: "Heartbeat", cell: (w) => when(w.heartbeat_at) }], p.workers))));
    } catch (e) { body.replaceChildren(problem(e)); }
  };
  await load();
  const timer = setInterval(load, 5000);
  ctx.onLeave(() => clearInterval(timer));
}

export async function deadLettersPage(main) {
  const body = h("div", {});
  const out = h("div", { "aria-live": "polite" });
  main.replaceChildren(h("h1", {}, "Dead letters"), out, body);
  const load = async () => {
    try {
      const items = (await get("/v1/admin/dead-letters?peek=5")).items;
      body.replaceChildren(table([
        { title: "Queue", cell: (q) => q.queue }, { title: "Waiting", cell: (q) => String(q.messages) },
        { title: "Oldest", cell: (q) => q.oldest.length ? json(q.oldest, `oldest dead letters of ${q.queue}`) : h("span", { class: "muted" }, "none") },
        { title: "", cell: (q) => q.messages ? h("button", { type: "button", "aria-label": `Redrive oldest of ${q.queue}`, onclick: async () => {
          try { const r = await post(`/v1/admin/dead-letters/${encodeURIComponent(q.queue)}/redrive`); out.replaceChildren(h("p", {}, `Redriven ${r.message_id || ""} onto ${r.queue}.`)); }
          catch (err) { out.replaceChildren(problem(err)); }
          load();
        } }, "Redrive oldest") : "" },
      ], items));
    } catch (e) { body.replaceChildren(problem(e)); }
  };
  await load();
}
