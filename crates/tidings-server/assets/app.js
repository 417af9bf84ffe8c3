// The Tidings console: a hash-routed single page over the JSON API and Server-Sent Events.
// Plain JavaScript, no build step. Every string from the store goes through textContent.
"use strict";

const view = document.getElementById("view");
let cleanup = [];

// ---------- helpers ----------
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
const enc = encodeURIComponent;
function token() { return localStorage.getItem("tidings-token") || ""; }
function withToken(url) {
  const t = token();
  return t ? url + (url.includes("?") ? "&" : "?") + "access_token=" + enc(t) : url;
}
async function api(path) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  const r = await fetch(path, { headers });
  const body = await r.json().catch(() => ({}));
  if (r.status === 401) document.getElementById("auth").hidden = false;
  if (!r.ok) {
    const e = new Error(body.detail || r.statusText);
    e.status = r.status;
    throw e;
  }
  return body;
}
function subscribe(url, onEvent, onState) {
  const es = new EventSource(withToken(url));
  es.onmessage = (m) => onEvent(JSON.parse(m.data), m.lastEventId);
  es.onopen = () => onState && onState(true);
  es.onerror = () => onState && onState(false);
  cleanup.push(() => es.close());
  return es;
}
function fmtNum(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1e9) return (n / 1e9).toFixed(1) + "G";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return String(Math.round(n * 10) / 10);
}
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const u = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function ago(ts) {
  const s = (Date.now() - new Date(ts).getTime()) / 1000;
  if (s < 5) return "just now";
  if (s < 60) return Math.floor(s) + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 86400) return Math.floor(s / 3600) + "h ago";
  return new Date(ts).toLocaleString();
}
function time(ts) {
  return h("time", { datetime: ts, title: ts }, new Date(ts).toLocaleTimeString([], { hour12: false }) + "." + String(new Date(ts).getMilliseconds()).padStart(3, "0"));
}
// Pretty-prints JSON with colours, building nodes (never HTML strings).
function jsonView(value) {
  const pre = h("pre", { class: "json" });
  const out = [];
  const walk = (v, ind) => {
    const pad = "  ".repeat(ind);
    if (Array.isArray(v)) {
      if (!v.length) return out.push("[]");
      out.push("[\n");
      v.forEach((x, i) => { out.push(pad + "  "); walk(x, ind + 1); out.push(i < v.length - 1 ? ",\n" : "\n"); });
      out.push(pad + "]");
    } else if (v && typeof v === "object") {
      const keys = Object.keys(v);
      if (!keys.length) return out.push("{}");
      out.push("{\n");
      keys.forEach((k, i) => {
        out.push(pad + "  ", h("span", { class: "j-key" }, JSON.stringify(k)), ": ");
        walk(v[k], ind + 1);
        out.push(i < keys.length - 1 ? ",\n" : "\n");
      });
      out.push(pad + "}");
    } else if (typeof v === "string") out.push(h("span", { class: "j-str" }, JSON.stringify(v)));
    else if (typeof v === "number") out.push(h("span", { class: "j-num" }, String(v)));
    else out.push(h("span", { class: "j-lit" }, String(v)));
  };
  walk(value, 0);
  pre.append(...out.map((x) => (typeof x === "string" ? document.createTextNode(x) : x)));
  return pre;
}
function streamLink(s) { return h("a", { href: "#/streams/" + enc(s) }, s); }
function eventLink(e, label) { return h("a", { href: "#/event/" + enc(e.stream) + "/" + e.revision }, label); }
function errorBox(e) { return h("div", { class: "error" }, e.message || String(e)); }

// ---------- header stats ----------
let lastStats = null;
async function pollStats() {
  try {
    const s = await api("/stats");
    const now = performance.now();
    if (lastStats) {
      const dt = (now - lastStats.at) / 1000;
      const rate = Math.max(0, (s.eventsAppended - lastStats.events) / dt);
      document.getElementById("stat-rate").textContent = fmtNum(rate);
    } else {
      document.getElementById("stat-rate").textContent = "0";
    }
    lastStats = { at: now, events: s.eventsAppended };
    document.getElementById("stat-events").textContent = fmtNum(s.events);
    document.getElementById("stat-size").textContent = s.storeBytes === null ? "in memory" : fmtBytes(s.storeBytes);
    document.getElementById("stat-size-label").textContent = (s.store || "store").split(" ")[0];
    document.getElementById("stat-dot").className = "dot ok";
  } catch (e) {
    document.getElementById("stat-dot").className = "dot bad";
  }
}

// ---------- pages ----------
async function streamsPage(params) {
  const prefix = params.get("prefix") || "";
  const after = params.get("after") || "";
  const input = h("input", { class: "search", type: "search", placeholder: "Search streams by prefix…", value: prefix, id: "stream-search", autofocus: true });
  let timer;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { location.hash = "#/streams?prefix=" + enc(input.value); }, 250);
  });
  const body = h("div", { class: "panel" }, h("div", { class: "empty" }, "Loading…"));
  view.replaceChildren(
    h("h1", {}, "Streams"),
    h("p", { class: "sub" }, "Every stream in the store, in name order."),
    h("div", { class: "toolbar" }, input),
    body,
  );
  input.focus();
  input.setSelectionRange(prefix.length, prefix.length);
  try {
    const q = "/streams?limit=50" + (prefix ? "&prefix=" + enc(prefix) : "") + (after ? "&after=" + enc(after) : "");
    const page = await api(q);
    if (!page.streams.length) {
      body.replaceChildren(h("div", { class: "empty" }, prefix ? `No stream starts with “${prefix}”.` : "No streams yet. Append an event: curl -X POST localhost:7400/streams/order-1 -H 'content-type: application/json' -d '{\"eventType\":\"OrderCreated\",\"data\":{}}'"));
      return;
    }
    const rows = page.streams.map((s) =>
      h("tr", { "data-stream": s.stream },
        h("td", {}, streamLink(s.stream)),
        h("td", { class: "num" }, s.lastRevision + 1),
        h("td", { class: "num" }, s.lastPosition),
        h("td", { title: s.lastWritten }, ago(s.lastWritten))));
    const pager = h("div", { class: "pager" },
      h("span", { class: "muted" }, after ? `after “${after}”` : ""),
      page.next ? h("a", { class: "button", href: "#/streams?prefix=" + enc(prefix) + "&after=" + enc(page.next) }, "Next page →") : h("span"));
    body.replaceChildren(
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Stream"), h("th", { class: "num" }, "Events"), h("th", { class: "num" }, "Last position"), h("th", {}, "Last write"))),
        h("tbody", { id: "streams-body" }, rows)),
      ...(page.next || after ? [pager] : []));
  } catch (e) { body.replaceChildren(errorBox(e)); }
}

function eventCard(e, fresh) {
  const meta = e.metadata || {};
  return h("article", { class: "event" + (fresh ? " fresh" : ""), "data-revision": e.revision, "data-position": e.position },
    h("div", { class: "event-head" },
      h("span", { class: "rev" }, "#" + e.revision),
      eventLink(e, h("span", { class: "type" }, e.eventType)),
      h("span", { class: "pill" }, "v" + e.eventVersion),
      h("span", { class: "meta" },
        h("span", {}, "pos ", h("span", { class: "mono" }, e.position)),
        meta.correlationId ? h("a", { href: "#/correlation/" + enc(meta.correlationId) }, "correlation") : null,
        h("span", { title: e.recordedAt }, ago(e.recordedAt)))),
    h("div", { class: "event-body" },
      h("div", {}, h("div", { class: "label" }, "data"), jsonView(e.data)),
      h("div", {}, h("div", { class: "label" }, "metadata"), jsonView(meta),
        h("div", { class: "label", style: "margin-top:8px" }, "source"), h("div", { class: "mono" }, e.source))));
}

async function streamPage(name, params) {
  const from = params.get("from");
  const pageSize = 20;
  const list = h("div", { class: "events", id: "stream-events" });
  const status = h("span", { class: "status" }, h("span", { class: "dot" }), "connecting");
  const pager = h("div", { class: "toolbar" });
  view.replaceChildren(
    h("h1", {}, h("span", { class: "kind" }, "stream"), name),
    h("p", { class: "sub", id: "stream-sub" }, "Newest first."),
    h("div", { class: "toolbar" }, h("a", { href: "#/streams" }, "← all streams"), h("span", { class: "spacer" }), status),
    list, pager);
  let page;
  try {
    page = await api("/streams/" + enc(name) + "?direction=backward&limit=" + pageSize + (from ? "&from=" + from : ""));
  } catch (e) {
    if (e.status !== 404) { list.replaceChildren(errorBox(e)); return; }
    page = { events: [], version: null, next: null };
  }
  document.getElementById("stream-sub").textContent =
    page.version === null ? "No events yet — new ones appear here live." : `${page.version + 1} events · newest first`;
  list.replaceChildren(...page.events.map((e) => eventCard(e)));
  const newer = from !== null && page.version !== null && Number(from) < page.version;
  pager.replaceChildren(
    newer ? h("a", { class: "button", href: "#/streams/" + enc(name) + (Number(from) + pageSize >= page.version ? "" : "?from=" + (Number(from) + pageSize)) }, "← Newer") : h("span"),
    h("span", { class: "spacer" }),
    page.next !== null ? h("a", { class: "button", href: "#/streams/" + enc(name) + "?from=" + page.next }, "Older →") : h("span"));
  if (from !== null) { status.replaceChildren("live updates on the first page"); return; }
  const next = page.version === null ? 0 : page.version + 1;
  subscribe("/subscribe/streams/" + enc(name) + "?from=" + next, (e) => {
    list.prepend(eventCard(e, true));
    while (list.children.length > 200) list.lastChild.remove();
    document.getElementById("stream-sub").textContent = `${e.revision + 1} events · newest first`;
  }, (ok) => status.replaceChildren(h("span", { class: "dot" + (ok ? " live" : "") }), ok ? "live" : "reconnecting…"));
}

async function eventPage(name, revision) {
  view.replaceChildren(h("div", { class: "empty" }, "Loading…"));
  try {
    const e = await api("/streams/" + enc(name) + "/" + revision);
    const meta = e.metadata || {};
    const fields = [
      ["eventId", e.eventId], ["eventType", e.eventType], ["eventVersion", e.eventVersion],
      ["stream", streamLink(e.stream)], ["revision", e.revision], ["position", e.position],
      ["timestamp", e.timestamp], ["recordedAt", e.recordedAt], ["source", e.source],
      ["correlationId", meta.correlationId ? h("a", { href: "#/correlation/" + enc(meta.correlationId) }, meta.correlationId) : "–"],
      ["causationId", meta.causationId || "–"], ["userId", meta.userId || "–"],
    ];
    view.replaceChildren(
      h("h1", {}, h("span", { class: "kind" }, "event"), e.eventType),
      h("p", { class: "sub" }, streamLink(e.stream), " · revision " + e.revision),
      h("div", { class: "toolbar" },
        e.revision > 0 ? h("a", { class: "button", href: "#/event/" + enc(name) + "/" + (e.revision - 1) }, "← Previous") : null,
        h("a", { class: "button", href: "#/event/" + enc(name) + "/" + (e.revision + 1) }, "Next →")),
      h("div", { class: "panel" }, h("dl", { class: "fields" }, fields.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("div", { class: "label" }, "data"), jsonView(e.data)),
        h("div", { class: "panel" }, h("div", { class: "label" }, "metadata"), jsonView(meta))));
  } catch (err) { view.replaceChildren(h("h1", {}, "Event"), errorBox(err)); }
}

function tailPage(params) {
  const filterType = params.get("type") || "";
  const prefix = params.get("streamPrefix") || "";
  let paused = false;
  let held = [];
  const rows = h("div", { id: "tail-rows" });
  const status = h("span", { class: "status" }, h("span", { class: "dot" }), "connecting");
  const counter = h("span", { class: "muted", id: "tail-held" });
  const pause = h("button", { id: "tail-pause", class: "primary" }, "Pause");
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) { held.forEach((e) => add(e)); held = []; counter.textContent = ""; }
  });
  const typeInput = h("input", { class: "search", placeholder: "event type (comma-separated)", value: filterType, style: "max-width:240px" });
  const prefixInput = h("input", { class: "search", placeholder: "stream prefix", value: prefix, style: "max-width:200px" });
  const apply = h("button", {}, "Filter");
  apply.addEventListener("click", () => {
    location.hash = "#/tail?type=" + enc(typeInput.value) + "&streamPrefix=" + enc(prefixInput.value);
  });
  view.replaceChildren(
    h("h1", {}, "Live tail ", h("span", { class: "kind" }, "$all")),
    h("p", { class: "sub" }, "Events as they are committed, newest on top."),
    h("div", { class: "toolbar" }, pause, counter, h("span", { class: "spacer" }), typeInput, prefixInput, apply, status),
    h("div", { class: "panel tail" },
      h("div", { class: "tail-row head" }, h("span", {}, "pos"), h("span", {}, "time"), h("span", {}, "stream"), h("span", {}, "type"), h("span", {}, "data")),
      rows,
      h("div", { class: "empty", id: "tail-empty" }, "Waiting for events…")));
  function add(e) {
    document.getElementById("tail-empty")?.remove();
    rows.prepend(h("div", { class: "tail-row fresh", "data-position": e.position },
      h("span", {}, eventLink(e, e.position)),
      h("span", {}, time(e.recordedAt)),
      h("span", {}, streamLink(e.stream)),
      h("span", { class: "type" }, e.eventType),
      h("span", { class: "data", title: JSON.stringify(e.data) }, JSON.stringify(e.data))));
    while (rows.children.length > 500) rows.lastChild.remove();
  }
  let url = "/subscribe/all?";
  if (filterType) url += "type=" + enc(filterType) + "&";
  if (prefix) url += "streamPrefix=" + enc(prefix) + "&";
  // Start with the last few events for context, then go live after them.
  api("/stats").then((s) => {
    const from = Math.max(0, s.events - 20);
    subscribe(url + "from=" + from, (e) => {
      if (paused) { held.push(e); counter.textContent = held.length + " new while paused"; } else add(e);
    }, (ok) => status.replaceChildren(h("span", { class: "dot" + (ok ? " live" : "") }), ok ? "live" : "reconnecting…"));
  }).catch((e) => rows.replaceChildren(errorBox(e)));
}

function correlationForm() {
  const input = h("input", { class: "search", placeholder: "correlation id, e.g. corr-123", id: "corr-input" });
  const go = h("button", { class: "primary" }, "Show tree");
  const submit = () => { if (input.value) location.hash = "#/correlation/" + enc(input.value); };
  go.addEventListener("click", submit);
  input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") submit(); });
  view.replaceChildren(
    h("h1", {}, "Correlations"),
    h("p", { class: "sub" }, "Every event of one business transaction, drawn as its causation tree."),
    h("div", { class: "toolbar" }, input, go));
  input.focus();
}

async function correlationPage(id) {
  view.replaceChildren(h("div", { class: "empty" }, "Loading…"));
  try {
    const page = await api("/correlations/" + enc(id));
    const events = page.events;
    const byId = new Map(events.map((e) => [e.eventId, e]));
    const children = new Map();
    const roots = [];
    const external = new Map();
    for (const e of events) {
      const cause = e.metadata && e.metadata.causationId;
      if (cause && byId.has(cause)) {
        if (!children.has(cause)) children.set(cause, []);
        children.get(cause).push(e);
      } else if (cause) {
        if (!external.has(cause)) external.set(cause, []);
        external.get(cause).push(e);
      } else roots.push(e);
    }
    const node = (e) => {
      const kids = children.get(e.eventId) || [];
      return h("li", {},
        h("div", { class: "node", "data-event-id": e.eventId },
          h("span", { class: "type" }, eventLink(e, e.eventType)),
          h("span", { class: "where" }, streamLink(e.stream), " #" + e.revision + " · pos " + e.position + " · ", time(e.timestamp))),
        kids.length ? h("ul", {}, kids.map(node)) : null);
    };
    const tree = h("ul", { class: "tree", id: "corr-tree" },
      [...external.entries()].map(([cause, es]) => h("li", {},
        h("div", { class: "node external" }, h("span", { class: "type" }, cause), h("span", { class: "where" }, "cause outside the store")),
        h("ul", {}, es.map(node)))),
      roots.map(node));
    view.replaceChildren(
      h("h1", {}, h("span", { class: "kind" }, "correlation"), id),
      h("p", { class: "sub" }, `${events.length} events in commit order, drawn by causationId.`),
      h("div", { class: "panel", style: "padding:16px" }, tree));
  } catch (e) { view.replaceChildren(h("h1", {}, h("span", { class: "kind" }, "correlation"), id), errorBox(e)); }
}

// ---------- router ----------
function route() {
  cleanup.forEach((f) => f());
  cleanup = [];
  const hash = location.hash.replace(/^#/, "") || "/streams";
  const [path, qs] = hash.split("?");
  const params = new URLSearchParams(qs || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === (parts[0] === "event" ? "streams" : parts[0])));
  if (parts[0] === "streams" && parts.length === 2) return streamPage(parts[1], params);
  if (parts[0] === "event" && parts.length === 3) return eventPage(parts[1], parts[2]);
  if (parts[0] === "tail") return tailPage(params);
  if (parts[0] === "correlation" && parts.length === 2) return correlationPage(parts[1]);
  if (parts[0] === "correlation") return correlationForm();
  if (parts[0] === "groups" && parts.length === 2) return groupPage(parts[1]);
  if (parts[0] === "groups") return groupsPage();
  return streamsPage(params);
}

document.getElementById("auth-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem("tidings-token", document.getElementById("auth-token").value);
  document.getElementById("auth").hidden = true;
  route();
});
window.addEventListener("hashchange", route);
route();
pollStats();
setInterval(pollStats, 1000);
