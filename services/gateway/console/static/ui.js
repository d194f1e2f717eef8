// Small DOM helpers and the charts (SVG, drawn here: no library, no CDN).
const SVG = "http://www.w3.org/2000/svg";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

export const STATES = ["PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"];
export const FINAL = new Set(["SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"]);

export const badge = (state) => h("span", { class: `state state-${state}`, "data-state": state }, state);

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

export function table(columns, rows, { caption, empty = "Nothing here yet." } = {}) {
  const t = h("table", {},
    caption ? h("caption", { class: "muted" }, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.title)))),
    h("tbody", {}, rows.length ? rows.map((r) => {
      const tr = h("tr", {}, columns.map((c) => h("td", {}, c.cell(r))));
      if (r && r.id) tr.dataset.id = r.id;
      return tr;
    }) : h("tr", {}, h("td", { colspan: String(columns.length), class: "muted" }, empty))));
  return t;
}

export const json = (v, label = "JSON") => h("pre", { class: "json", tabindex: "0", "aria-label": label }, JSON.stringify(v, null, 2));

// A stacked bar of counts per state, with a legend (labelled for screen readers).
export function countsBar(counts, order = STATES) {
  const total = order.reduce((a, k) => a + (counts[k] || 0), 0) || 1;
  const label = order.filter((k) => counts[k]).map((k) => `${k} ${counts[k]}`).join(", ") || "none";
  const bar = h("div", { class: "bar", role: "img", "aria-label": `counts: ${label}` });
  for (const k of order) {
    if (!counts[k]) continue;
    const seg = h("span", { class: `seg-${k}`, title: `${k}: ${counts[k]}` });
    seg.style.width = `${(100 * counts[k]) / total}%`;
    bar.append(seg);
  }
  const legend = h("div", { class: "legend" }, order.filter((k) => counts[k]).map((k) =>
    h("span", {}, h("i", { class: `seg-${k}` }), `${k} ${counts[k]}`)));
  return h("div", {}, bar, legend);
}

// One quota: used (and held) against its limit.
export function quotaBar(name, q, fmt = (x) => String(x)) {
  const limit = q.limit || 0;
  const used = q.used || 0;
  const held = q.held || 0;
  const pct = limit ? Math.min(100, (100 * used) / limit) : 0;
  const bar = h("div", { class: "bar", role: "img", "aria-label": `${name}: ${fmt(used)} of ${fmt(limit)}` });
  const u = h("span", { class: "seg-used" }); u.style.width = `${pct}%`;
  const hd = h("span", { class: "seg-held" }); hd.style.width = `${limit ? Math.min(100 - pct, (100 * held) / limit) : 0}%`;
  bar.append(u, hd);
  return h("div", { class: "quota" }, h("div", {}, h("strong", {}, name), " ",
    h("span", { class: "muted" }, `${fmt(used)} of ${fmt(limit)}${held ? ` (+${fmt(held)} held)` : ""}`)), bar);
}

// A line chart of [{t: Date, v: number}] series, scaled to fit.
export function lineChart(series, { title, width = 480, height = 160, max } = {}) {
  const pad = 30;
  const all = series.flatMap((x) => x.points);
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title || "chart" });
  svg.append(s("title", {}, title || "chart"));
  svg.append(s("line", { class: "axis", x1: pad, y1: height - pad, x2: width - 4, y2: height - pad }));
  svg.append(s("line", { class: "axis", x1: pad, y1: 4, x2: pad, y2: height - pad }));
  if (!all.length) { svg.append(s("text", { x: pad + 8, y: height / 2 }, "no data yet")); return svg; }
  const t0 = Math.min(...all.map((p) => +p.t));
  const t1 = Math.max(...all.map((p) => +p.t), t0 + 1);
  const top = max ?? Math.max(...all.map((p) => p.v), 1);
  const x = (t) => pad + ((+t - t0) / (t1 - t0)) * (width - pad - 8);
  const y = (v) => height - pad - (Math.min(v, top) / top) * (height - pad - 8);
  svg.append(s("text", { x: 2, y: 12 }, fmtNum(top)), s("text", { x: 2, y: height - pad }, "0"));
  svg.append(s("text", { x: pad, y: height - 10 }, new Date(t0).toISOString().slice(11, 19)));
  svg.append(s("text", { x: width - 60, y: height - 10 }, new Date(t1).toISOString().slice(11, 19)));
  const colors = ["#0969da", "#cf222e", "#2da44e", "#8250df", "#bf8700"];
  series.forEach((ser, i) => {
    const d = ser.points.map((p, j) => `${j ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
    svg.append(s("path", { class: "series", d, stroke: colors[i % colors.length] }));
    svg.append(s("text", { x: pad + 8 + 110 * i, y: 12, fill: colors[i % colors.length] }, ser.name));
  });
  return svg;
}

export function barChart(items, { title, width = 480, height = 160 } = {}) {
  const pad = 30;
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title || "chart" });
  svg.append(s("title", {}, title || "chart"));
  svg.append(s("line", { class: "axis", x1: pad, y1: height - pad, x2: width - 4, y2: height - pad }));
  if (!items.length) { svg.append(s("text", { x: pad + 8, y: height / 2 }, "no data yet")); return svg; }
  const top = Math.max(...items.map((i) => i.v), 1e-9);
  const w = (width - pad - 8) / items.length;
  items.forEach((it, i) => {
    const bh = (it.v / top) * (height - pad - 16);
    svg.append(s("rect", { x: pad + i * w + 2, y: height - pad - bh, width: Math.max(w - 4, 1), height: bh, fill: "#0969da" },
      s("title", {}, `${it.label}: ${fmtNum(it.v)}`)));
    if (items.length <= 12) svg.append(s("text", { x: pad + i * w + 2, y: height - 12 }, it.label.slice(5, 10)));
  });
  svg.append(s("text", { x: 2, y: 12 }, fmtNum(top)));
  return svg;
}

export function fmtNum(v) {
  return Math.abs(v) >= 1000 ? v.toExponential(2) : Number(v.toFixed(2)).toString();
}

// A directed acyclic graph drawn in layers: nodes [{id, label, state}], edges [{from, to, label}].
export function dagSvg(nodes, edges, onClick) {
  const depth = new Map(nodes.map((n) => [n.id, 0]));
  for (let i = 0; i < nodes.length; i++) {
    for (const e of edges) {
      if (depth.has(e.from) && depth.has(e.to)) depth.set(e.to, Math.max(depth.get(e.to), depth.get(e.from) + 1));
    }
  }
  const layers = [];
  for (const n of nodes) (layers[depth.get(n.id)] ||= []).push(n);
  const W = 150, H = 44, GX = 60, GY = 24;
  const pos = new Map();
  layers.forEach((layer, i) => layer.forEach((n, j) => pos.set(n.id, { x: 10 + i * (W + GX), y: 10 + j * (H + GY) })));
  const width = 20 + layers.length * (W + GX);
  const height = 20 + Math.max(...layers.map((l) => l.length)) * (H + GY);
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "group", "aria-label": "workflow graph: steps and their dependencies" });
  const defs = s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "6", markerHeight: "6", orient: "auto" },
    s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#57606a" })));
  svg.append(defs);
  for (const e of edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    svg.append(s("path", { class: "edge", d: `M${x1},${y1} C${x1 + 30},${y1} ${x2 - 30},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" }));
    if (e.label) svg.append(s("text", { x: (x1 + x2) / 2 - 20, y: (y1 + y2) / 2 - 4 }, e.label));
  }
  const colors = { SUCCEEDED: "#2da44e", FAILED: "#cf222e", TIMED_OUT: "#cf222e", CANCELLED: "#8c959f", RUNNING: "#0969da", QUEUED: "#54aeff", PENDING: "#d4a72c" };
  for (const n of nodes) {
    const p = pos.get(n.id);
    const g = s("g", { class: "node", transform: `translate(${p.x},${p.y})` });
    const a = s("a", { href: n.href || "#" });
    a.append(s("rect", { width: W, height: H, rx: 6, "stroke-width": 2, stroke: colors[n.state] || "#57606a" }));
    a.append(s("text", { x: 8, y: 18 }, n.label));
    a.append(s("text", { x: 8, y: 34, fill: colors[n.state] || "#57606a" }, n.state || ""));
    g.append(a);
    svg.append(g);
  }
  return svg;
}
