// The public API as the console uses it: the key from session storage on every call.
const KEY = "stratus.key";

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export const auth = {
  key: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
  onRefused: null, // called with the ApiError when the key stops working (401)
};

function headers(extra = {}) {
  const h = { ...extra };
  const key = auth.key();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function problemOf(resp) {
  try { return await resp.json(); } catch { return null; }
}

export async function call(method, path, { json, body, headers: extra, raw } = {}) {
  const init = { method, headers: headers(extra), cache: "no-store" };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const resp = await fetch(path, init);
  if (!resp.ok) {
    const err = new ApiError(resp.status, await problemOf(resp));
    if (resp.status === 401 && auth.onRefused) auth.onRefused(err);
    throw err;
  }
  if (raw) return resp;
  if (resp.status === 204) return null;
  const type = resp.headers.get("content-type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

export const get = (path) => call("GET", path);
export const post = (path, json) => call("POST", path, { json });
export const patch = (path, json) => call("PATCH", path, { json });
export const del = (path) => call("DELETE", path);

export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    for (const one of Array.isArray(v) ? v : [v]) u.append(k, one);
  }
  const s = u.toString();
  return s ? `?${s}` : "";
}

// Lines of a streamed text response (the log with ?follow=1), until it ends or is aborted.
export async function streamLines(path, signal, onLine) {
  const resp = await fetch(path, { headers: headers(), signal, cache: "no-store" });
  if (!resp.ok) {
    const err = new ApiError(resp.status, await problemOf(resp));
    if (resp.status === 401 && auth.onRefused) auth.onRefused(err);
    throw err;
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let rest = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    rest += value;
    const lines = rest.split("\n");
    rest = lines.pop();
    for (const line of lines) onLine(line);
  }
  if (rest) onLine(rest);
}

// GET /v1/events read with fetch (EventSource cannot send the Authorization header), resumed
// after the last id seen on every reconnect. Returns a function that stops it.
export function subscribe({ job, onEvent, onStatus }) {
  const ctl = new AbortController();
  let last = null;
  let delay = 500;
  const run = async () => {
    while (!ctl.signal.aborted) {
      try {
        const h = headers({ Accept: "text/event-stream" });
        if (last) h["Last-Event-ID"] = last;
        const resp = await fetch(`/v1/events${qs({ job })}`, { headers: h, signal: ctl.signal, cache: "no-store" });
        if (!resp.ok) {
          const err = new ApiError(resp.status, await problemOf(resp));
          if ((resp.status === 401 || resp.status === 403) && auth.onRefused) auth.onRefused(err);
          if (resp.status === 401 || resp.status === 403 || resp.status === 404) { onStatus && onStatus(false); return; }
          throw err;
        }
        onStatus && onStatus(true);
        delay = 500;
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            const ev = { id: null, event: "message", data: "" };
            for (const line of block.split("\n")) {
              if (!line || line.startsWith(":")) continue;
              const i = line.indexOf(":");
              const field = i < 0 ? line : line.slice(0, i);
              const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
              if (field === "id") ev.id = val;
              else if (field === "event") ev.event = val;
              else if (field === "data") ev.data += (ev.data ? "\n" : "") + val;
            }
            if (ev.id) last = ev.id;
            if (ev.data) {
              let data;
              try { data = JSON.parse(ev.data); } catch { data = ev.data; }
              onEvent(ev.event, data, ev.id);
            }
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
        if (e instanceof ApiError && e.status < 500 && e.status !== 429) { onStatus && onStatus(false); return; }
      }
      onStatus && onStatus(false);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  };
  run();
  return () => ctl.abort();
}

// PUT a file with upload progress (fetch has no upload progress; XMLHttpRequest does).
export function upload(name, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", `/v1/datasets/${encodePath(name)}`);
    const key = auth.key();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) { onProgress(1); resolve(body); }
      else {
        const err = new ApiError(xhr.status, body);
        if (xhr.status === 401 && auth.onRefused) auth.onRefused(err);
        reject(err);
      }
    };
    xhr.onerror = () => reject(new ApiError(0, { detail: "network error" }));
    xhr.send(file);
  });
}

export const encodePath = (name) => name.split("/").map(encodeURIComponent).join("/");

// Fetch a dataset's bytes with the key and hand them to the browser as a download.
export async function download(name) {
  const resp = await call("GET", `/v1/datasets/${encodePath(name)}`, { raw: true });
  const blob = await resp.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name.split("/").pop();
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
