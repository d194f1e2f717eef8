// The console: sign-in, navigation and the hash routes of the tenant's and the admin's pages.
import { auth, get, ApiError } from "./api.js";
import { h } from "./ui.js";
import * as tenant from "./tenant.js";
import * as admin from "./admin.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const banner = document.getElementById("banner");
const signout = document.getElementById("signout");
let role = null; // "tenant" | "admin"
let leaving = [];

const TENANT_NAV = [["#/jobs", "Jobs"], ["#/workflows", "Workflows"], ["#/datasets", "Datasets"], ["#/usage", "Usage"]];
const ADMIN_NAV = [["#/admin/tenants", "Tenants"], ["#/admin/pools", "Pools"], ["#/admin/dead-letters", "Dead letters"]];

function say(text, kind = "error") {
  banner.hidden = !text;
  banner.className = kind;
  banner.textContent = text || "";
}

auth.onRefused = () => {
  if (!role) return; // a sign-in that fails says so on its own form
  auth.clear();
  role = null;
  say("The API key was refused (revoked or unknown). Sign in again.");
  route();
};

async function whoAmI() {
  try {
    const t = await get("/v1/tenant");
    return { role: "tenant", name: t.name, suspended: t.suspended };
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 403) throw e;
  }
  await get("/v1/tenants?limit=1"); // 403 too: a key that is neither
  return { role: "admin", name: "platform admin" };
}

function signInPage() {
  nav.replaceChildren();
  who.textContent = "";
  signout.hidden = true;
  const err = h("p", { class: "error", role: "alert" });
  main.replaceChildren(h("section", { class: "signin panel" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "With an API key (a tenant's, or the platform admin key). It is kept in this tab's session storage only."),
    h("form", { id: "signin-form", onsubmit: async (e) => {
      e.preventDefault();
      const key = new FormData(e.target).get("key").trim();
      auth.set(key);
      try {
        await start();
        say("");
        if (!location.hash || location.hash === "#/") location.hash = role === "admin" ? "#/admin/tenants" : "#/jobs";
        else route();
      } catch (x) {
        auth.clear();
        err.textContent = x instanceof ApiError ? `${x.status}: ${x.message}` : String(x);
      }
    } },
    h("label", { for: "key" }, "API key", h("input", { id: "key", name: "key", type: "password", autocomplete: "off", required: true })),
    h("p", {}, h("button", { type: "submit" }, "Sign in")), err)));
}

async function start() {
  const me = await whoAmI();
  role = me.role;
  who.textContent = `${me.name}${me.suspended ? " (suspended)" : ""}`;
  signout.hidden = false;
}

function renderNav() {
  const items = role === "admin" ? ADMIN_NAV : TENANT_NAV;
  const here = location.hash.split("?")[0];
  nav.replaceChildren(...items.map(([href, text]) => h("a", { href, "aria-current": here.startsWith(href) ? "page" : undefined }, text)));
}

async function route() {
  for (const f of leaving.splice(0)) { try { f(); } catch { /* already stopped */ } }
  if (!auth.key()) return signInPage();
  if (!role) {
    try { await start(); } catch { auth.clear(); return signInPage(); }
  }
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const ctx = { params: new URLSearchParams(query || ""), onLeave: (f) => leaving.push(f) };
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (!parts.length) { location.hash = role === "admin" ? "#/admin/tenants" : "#/jobs"; return; }
  renderNav();
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    if (role === "admin") {
      if (parts[0] !== "admin") { location.hash = "#/admin/tenants"; return; }
      if (parts[1] === "pools") return await admin.poolsPage(main, ctx);
      if (parts[1] === "dead-letters") return await admin.deadLettersPage(main, ctx);
      return await admin.tenantsPage(main, ctx);
    }
    switch (parts[0]) {
      case "jobs": return parts[1] ? await tenant.jobPage(main, ctx, parts.slice(1).join("/")) : await tenant.jobsPage(main, ctx);
      case "workflows": return parts[1] ? await tenant.workflowPage(main, ctx, parts[1]) : await tenant.workflowsPage(main, ctx);
      case "datasets": return await tenant.datasetsPage(main, ctx, parts.slice(1).join("/") || null);
      case "usage": return await tenant.usagePage(main, ctx);
      default: location.hash = "#/jobs";
    }
  } catch (e) {
    main.replaceChildren(h("p", { class: "error", role: "alert" }, e instanceof ApiError ? `${e.status}: ${e.message}` : String(e)));
  }
}

signout.addEventListener("click", () => { auth.clear(); role = null; say(""); location.hash = ""; route(); });
window.addEventListener("hashchange", route);
route();
