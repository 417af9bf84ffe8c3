// The console's consumer-group pages: every group with its lag, and one group's members,
// in-flight messages and parked list with Replay. Loaded before app.js, whose helpers
// (h, api, enc, view, cleanup, …) these pages use when they run; app.js routes #/groups
// here. Every string from the server goes through textContent.
"use strict";

// A JSON request that changes something; the answer's body, or an Error with its status.
async function apiSend(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const answer = r.status === 204 ? {} : await r.json().catch(() => ({}));
  if (r.status === 401) document.getElementById("auth").hidden = false;
  if (!r.ok) {
    const e = new Error(answer.detail || r.statusText);
    e.status = r.status;
    throw e;
  }
  return answer;
}

function groupLink(name) { return h("a", { href: "#/groups/" + enc(name) }, name); }
function tile(label, value, id) {
  return h("div", { class: "tile" }, h("b", { id }, value), h("small", {}, label));
}
function noGroups(e) {
  return e.status === 501
    ? h("div", { class: "empty" }, "This server hosts no consumer groups.")
    : errorBox(e);
}
// Re-runs `load` every two seconds while the page is shown.
function every2s(load) {
  load();
  const t = setInterval(load, 2000);
  cleanup.push(() => clearInterval(t));
}

async function groupsPage() {
  const body = h("div", { class: "panel" }, h("div", { class: "empty" }, "Loading…"));
  view.replaceChildren(
    h("h1", {}, "Consumer groups"),
    h("p", { class: "sub" }, "Durable subscriptions whose members share the work. Refreshed every 2 seconds."),
    body);
  every2s(async () => {
    try {
      const { groups } = await api("/groups");
      if (!groups.length) {
        body.replaceChildren(h("div", { class: "empty" }, "No consumer groups yet. Create one: curl -X POST localhost:7400/groups -H 'content-type: application/json' -d '{\"name\":\"billing\"}'"));
        return;
      }
      const described = await Promise.all(groups.map((g) => api("/groups/" + enc(g.name)).catch(() => null)));
      const rows = described.filter(Boolean).map((d) =>
        h("tr", { "data-group": d.name },
          h("td", {}, groupLink(d.name)),
          h("td", {}, h("span", { class: "pill" }, d.settings.strategy)),
          h("td", { class: "num" }, fmtNum(d.lag)),
          h("td", { class: "num" }, d.members.length),
          h("td", { class: "num" }, d.inFlight),
          h("td", { class: "num" + (d.parked ? " warn" : "") }, d.parked)));
      body.replaceChildren(h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Group"), h("th", {}, "Strategy"), h("th", { class: "num" }, "Lag"),
          h("th", { class: "num" }, "Members"), h("th", { class: "num" }, "In flight"), h("th", { class: "num" }, "Parked"))),
        h("tbody", { id: "groups-body" }, rows)));
    } catch (e) { body.replaceChildren(noGroups(e)); }
  });
}

async function groupPage(name) {
  const path = "/groups/" + enc(name);
  const tiles = h("div", { class: "tiles" });
  const members = h("div", { class: "panel" }, h("div", { class: "empty" }, "Loading…"));
  const parked = h("div", { class: "panel", id: "parked" }, h("div", { class: "empty" }, "Loading…"));
  const notice = h("span", { class: "muted", id: "group-notice" });
  const replayAll = h("button", { class: "primary", id: "parked-replay-all", disabled: true }, "Replay all");
  view.replaceChildren(
    h("h1", {}, h("span", { class: "kind" }, "group"), name),
    h("p", { class: "sub", id: "group-sub" }, "Refreshed every 2 seconds."),
    h("div", { class: "toolbar" }, h("a", { href: "#/groups" }, "← all groups")),
    tiles,
    h("h2", {}, "Members"), members,
    h("h2", {}, "Parked messages"),
    h("div", { class: "toolbar" }, replayAll, notice),
    parked);
  const replay = async (url) => {
    try {
      const r = await apiSend("POST", url);
      notice.textContent = `Queued ${r.queued} for replay: each leaves the list once a member acknowledges it.`;
      load();
    } catch (e) { notice.textContent = "Replay failed: " + e.message; }
  };
  replayAll.addEventListener("click", () => replay(path + "/parked/replay"));
  async function load() {
    let d;
    try { d = await api(path); } catch (e) {
      tiles.replaceChildren(noGroups(e)); members.replaceChildren(); parked.replaceChildren();
      return;
    }
    document.getElementById("group-sub").textContent =
      `${d.settings.strategy} · checkpoint ${d.checkpoint} · head ${d.head} · refreshed every 2 seconds`;
    tiles.replaceChildren(
      tile("lag", fmtNum(d.lag), "group-lag"),
      tile("members", d.members.length, "group-members"),
      tile("in flight", d.inFlight, "group-in-flight"),
      tile("parked", d.parked, "group-parked"));
    members.replaceChildren(d.members.length
      ? h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Member"), h("th", { class: "num" }, "In flight"), h("th", { class: "num" }, "Lease left"))),
        h("tbody", { id: "members-body" }, d.members.map((m) => h("tr", {},
          h("td", {}, m.name), h("td", { class: "mono" }, m.member),
          h("td", { class: "num" }, m.inFlight), h("td", { class: "num" }, (m.leaseLeftMs / 1000).toFixed(1) + " s")))))
      : h("div", { class: "empty" }, "No live members."));
    let list;
    try { list = (await api(path + "/parked?limit=100")).parked; } catch (e) { parked.replaceChildren(errorBox(e)); return; }
    replayAll.disabled = !list.length;
    if (!list.length) { parked.replaceChildren(h("div", { class: "empty", id: "parked-empty" }, "Nothing parked.")); return; }
    parked.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, h("th", { class: "num" }, "Id"), h("th", {}, "Event"), h("th", {}, "Stream"),
        h("th", {}, "Reason"), h("th", { class: "num" }, "Attempts"), h("th", {}, "Parked"), h("th", {}))),
      h("tbody", { id: "parked-body" }, list.map((p) => h("tr", { "data-parked-id": p.id },
        h("td", { class: "num mono" }, p.id),
        h("td", {}, eventLink(p.event, h("span", { class: "type" }, p.event.eventType))),
        h("td", {}, streamLink(p.event.stream), " #" + p.event.revision),
        h("td", { class: "reason" }, p.reason, p.held ? h("span", { class: "pill" }, "held") : null),
        h("td", { class: "num" }, p.attempts),
        h("td", { title: p.parkedAt }, ago(p.parkedAt)),
        h("td", {}, h("button", { class: "replay", onclick: () => replay(path + "/parked/" + p.id + "/replay") }, "Replay")))))));
  }
  every2s(load);
}
