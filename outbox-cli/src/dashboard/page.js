// The outbox dashboard: polls the JSON API of the server that served it
// (the same routes scripts use) and draws the page. No dependencies.
"use strict";

const POLL_MS = 2000;
let actionsAllowed = false;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.floor(seconds);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function message(text, error) {
  const node = document.getElementById("message");
  node.textContent = text;
  node.className = error ? "error" : "";
}

async function getJson(path) {
  const res = await fetch(path, { cache: "no-store" });
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

async function act(path, question) {
  if (!window.confirm(question)) return;
  const token = document.getElementById("token").value.trim();
  sessionStorage.setItem("outbox-token", token);
  try {
    const res = await fetch(path, { method: "POST", headers: { Authorization: "Bearer " + token } });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) message((body.error || res.statusText) + " (HTTP " + res.status + ")", true);
    else message(body.action + " " + body.which + " in " + body.table + ": " + body.count + (body.count === 1 ? " entry" : " entries"));
  } catch (err) {
    message("request failed: " + err, true);
  }
  refresh();
}

function api(table, rest) {
  return "/api/tables/" + encodeURIComponent(table) + rest;
}

function actionButton(label, cls, path, question) {
  return el("button", {
    class: cls,
    disabled: !actionsAllowed,
    title: actionsAllowed ? null : "read-only: start the dashboard with --allow-actions and --token",
    onclick: () => act(path, question),
  }, label);
}

function totals(t) {
  const total = (key, label, value) =>
    el("div", { class: "total " + key }, el("span", { class: "n", "data-total": key }, value), el("span", { class: "label" }, label));
  return el("div", { class: "totals" },
    total("pending", "pending", t.pending),
    total("retrying", "retrying (of pending)", t.retrying),
    total("dead", "dead", t.dead),
    total("oldest", "oldest pending", age(t.oldest_pending_age_seconds)),
    t.published > 0 ? total("published", "published (kept)", t.published) : null);
}

// A name's versions and their entry counts: "v1:3 v2:9".
function versions(list) {
  if (!list || list.length === 0) return "-";
  return list.map((v) => "v" + v.version + ":" + v.entries).join(" ");
}

function byName(t) {
  if (t.by_name.length === 0) return el("p", { class: "empty" }, "no entries");
  const rows = t.by_name.map((n) => el("tr", { "data-name": n.name },
    el("td", {}, n.name),
    el("td", { class: "num", "data-k": "pending" }, n.pending),
    el("td", { class: "num", "data-k": "retrying" }, n.retrying),
    el("td", { class: "num", "data-k": "dead" }, n.dead),
    el("td", { class: "num", "data-k": "oldest" }, age(n.oldest_pending_age_seconds)),
    el("td", { "data-k": "versions" }, versions(n.versions)),
    el("td", {}, n.pending > 0
      ? actionButton("discard pending", "danger discard", api(t.table, "/pending/discard?name=" + encodeURIComponent(n.name)),
        "Delete the " + n.pending + " pending " + n.name + " entries of " + t.table + " for good?")
      : null)));
  return el("table", { class: "by-name" },
    el("thead", {}, el("tr", {}, el("th", {}, "event name"), el("th", { class: "num" }, "pending"),
      el("th", { class: "num" }, "retrying"), el("th", { class: "num" }, "dead"),
      el("th", { class: "num" }, "oldest pending"), el("th", {}, "versions"), el("th", {}, ""))),
    el("tbody", {}, ...rows));
}

function deadLetters(t, dead) {
  const head = el("h3", {}, "Dead letters ",
    dead.length > 0 ? actionButton("requeue all", "requeue-all", api(t.table, "/dead/requeue"),
      "Requeue every dead letter of " + t.table + " (pending again, attempts reset)?") : null, " ",
    dead.length > 0 ? actionButton("purge all", "danger purge-all", api(t.table, "/dead/purge"),
      "Delete every dead letter of " + t.table + " for good?") : null);
  if (dead.length === 0) return [head, el("p", { class: "empty" }, "no dead letters")];
  const rows = dead.map((d) => el("tr", { "data-event-id": d.event_id },
    el("td", {}, el("div", {}, d.name, " ", el("span", { class: "version" }, "v" + d.version)), el("small", {}, d.event_id)),
    el("td", { class: "num" }, d.attempts),
    el("td", {}, new Date(d.dead_since).toLocaleString()),
    el("td", { class: "reason" }, d.reason),
    el("td", {}, el("pre", { class: "payload" }, JSON.stringify(d.payload, null, 2))),
    el("td", {}, el("pre", { class: "headers" }, JSON.stringify(d.headers, null, 2))),
    el("td", {},
      actionButton("requeue", "requeue", api(t.table, "/dead/" + d.event_id + "/requeue"),
        "Requeue dead letter " + d.event_id + " (" + d.name + ")?"), " ",
      actionButton("purge", "danger purge", api(t.table, "/dead/" + d.event_id + "/purge"),
        "Delete dead letter " + d.event_id + " (" + d.name + ") for good?"))));
  return [head, el("table", { class: "dead" },
    el("thead", {}, el("tr", {}, el("th", {}, "event"), el("th", { class: "num" }, "attempts"),
      el("th", {}, "dead since"), el("th", {}, "reason"), el("th", {}, "payload"), el("th", {}, "headers"), el("th", {}, ""))),
    el("tbody", {}, ...rows))];
}

function blocked(t) {
  return t.blocked.map((b) => el("p", { class: "blocked" },
    "publisher " + b.publisher + " blocked for " + age(b.blocked_for_seconds) + (b.stale ? " (stale)" : "") + ": " + b.reason));
}

async function refresh() {
  try {
    const overview = await getJson("/api/overview");
    actionsAllowed = overview.actions_allowed;
    const mode = document.getElementById("mode");
    mode.textContent = actionsAllowed ? "actions allowed (token needed)" : "read-only";
    mode.className = "badge" + (actionsAllowed ? " actions" : "");
    document.getElementById("token-box").hidden = !actionsAllowed;
    const deadByTable = await Promise.all(overview.tables.map((t) => getJson(api(t.table, "/dead?limit=100"))));
    const sections = overview.tables.map((t, i) => el("div", { class: "table", "data-table": t.table },
      el("h2", {}, t.table), totals(t), ...blocked(t), byName(t), ...deadLetters(t, deadByTable[i])));
    document.getElementById("tables").replaceChildren(...sections);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    const source = overview.published_source;
    document.getElementById("published-source").textContent = source
      ? "(from " + source.relays.length + (source.relays.length === 1 ? " relay's " : " relays' ") + source.counter + ")"
      : "(no source: start the dashboard with --relay-metrics URL)";
  } catch (err) {
    message("cannot read the API: " + err.message, true);
  }
}

// One polyline per run of known values; a gap where a value is unknown.
function draw(svgId, axisId, points, value, spanMs, now) {
  const svg = document.getElementById(svgId);
  const known = points.map(value).filter((v) => v !== null);
  const max = Math.max(1, ...known) * 1.1;
  const runs = [];
  let run = [];
  for (const p of points) {
    const v = value(p);
    if (v === null) { if (run.length) runs.push(run); run = []; continue; }
    const x = 600 * (1 - (now - p.at_ms) / spanMs);
    const y = 160 - (160 * v) / max;
    run.push(x.toFixed(1) + "," + y.toFixed(1));
  }
  if (run.length) runs.push(run);
  svg.replaceChildren(...runs.map((r) => {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", (r.length === 1 ? [r[0], r[0]] : r).join(" "));
    return line;
  }));
  const last = known.length ? known[known.length - 1] : null;
  const span = spanMs >= 60000 ? Math.round(spanMs / 60000) + " min" : Math.round(spanMs / 1000) + " s";
  document.getElementById(axisId).replaceChildren(
    el("span", {}, "-" + span),
    el("span", {}, "max " + (known.length ? Math.round(Math.max(...known) * 10) / 10 : "-") + ", now " + (last === null ? "-" : Math.round(last * 10) / 10)),
    el("span", {}, "now"));
}

async function refreshChart() {
  try {
    const history = await getJson("/api/history");
    const now = Date.now();
    // The last hour, or less while the dashboard has sampled for less (at least 10 s).
    const first = history.points.length ? history.points[0].at_ms : now;
    const spanMs = Math.min(history.span_seconds * 1000, Math.max(10000, now - first));
    draw("chart-pending", "axis-pending", history.points, (p) => {
      const values = Object.values(p.pending).filter((v) => v !== null);
      return values.length ? values.reduce((a, b) => a + b, 0) : null;
    }, spanMs, now);
    draw("chart-published", "axis-published", history.points, (p) => p.published_per_second, spanMs, now);
  } catch (err) {
    message("cannot read the history: " + err.message, true);
  }
}

document.getElementById("token").value = sessionStorage.getItem("outbox-token") || "";
async function loop() {
  await Promise.all([refresh(), refreshChart()]);
  setTimeout(loop, POLL_MS);
}
loop();
