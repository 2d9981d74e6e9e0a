// skyd's dashboard: one page, no build step. The server pushes the state that this
// person may see (server-sent events, /api/events) whenever it changes; a request's log
// is followed the same way (/api/requests/ID/log). Text from the server only ever goes
// into textContent, never into HTML.
"use strict";

const LOG_KEEP = 2_000_000;          // characters of a followed log kept on the page
let state = null;
let selected = null;                 // the request whose log is open
let logStream = null;
let logLength = 0;                   // characters on the page

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.append(c instanceof Node ? c : el("td", c));
  return tr;
}

function fill(tableId, rows, empty) {
  const body = $(tableId).tBodies[0];
  if (!rows.length) {
    const td = el("td", empty, "empty");
    td.colSpan = $(tableId).tHead.rows[0].cells.length;
    rows = [row([td])];
  }
  body.replaceChildren(...rows);
}

function status(text) {
  return el("td", text, "status s-" + text);
}

function ago(t) {
  if (!t) return "";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return new Date(t * 1000).toLocaleString();
}

function span(a, b) {
  if (!a) return "";
  const s = (b || Date.now() / 1000) - a;
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  return `${(s / 60).toFixed(1)} min`;
}

// ---- the state ---------------------------------------------------------------------

function renderQueues() {
  fill("queues", state.queues.map((q) => {
    const used = q.slots ? Math.min(1, q.running / q.slots) : 0;
    const box = el("span", null, "bar-box");
    const bar = el("span", null, "bar");
    bar.style.width = `${(used * 100).toFixed(1)}%`;
    box.append(bar);
    const meter = el("td");
    meter.append(box);
    const tr = row([q.queue, q.running, q.pending, q.slots, meter, q.peak]);
    tr.dataset.queue = q.queue;
    return tr;
  }), "no queues");
}

function setOptions(select, values) {
  const keep = select.value;
  const key = JSON.stringify([...new Set(values)].sort());
  if (select.dataset.values === key) return;      // unchanged: leave an open list alone
  select.dataset.values = key;
  const options = [el("option", "all")];
  options[0].value = "";
  for (const v of [...new Set(values)].sort()) {
    const o = el("option", v);
    o.value = v;
    options.push(o);
  }
  select.replaceChildren(...options);
  select.value = values.includes(keep) ? keep : "";
  if (keep && !values.includes(keep)) {       // keep a chosen filter even with no match now
    const o = el("option", keep);
    o.value = keep;
    select.append(o);
    select.value = keep;
  }
}

function renderRequests() {
  const reqs = state.requests;
  setOptions($("filter-status"), reqs.map((r) => r.status));
  setOptions($("filter-user"), reqs.map((r) => r.user));
  setOptions($("filter-op"), reqs.map((r) => r.name));
  const want = { status: $("filter-status").value, user: $("filter-user").value,
                 name: $("filter-op").value };
  const shown = reqs.filter((r) => Object.entries(want).every(([k, v]) => !v || r[k] === v));
  $("requests-count").textContent = `${shown.length} of ${reqs.length} shown`;
  fill("requests", shown.map((r) => {
    const tr = row([el("td", r.id.slice(0, 8), "id"), r.name, r.user, status(r.status),
                    r.cluster || "", ago(r.created_at), span(r.created_at, r.started_at),
                    r.started_at ? span(r.started_at, r.finished_at) : "",
                    el("td", r.error || "", "error")]);
    tr.dataset.id = r.id;
    tr.dataset.status = r.status;
    if (r.id === selected) tr.classList.add("selected");
    tr.addEventListener("click", () => openLog(r.id));
    return tr;
  }), "no requests");
}

function renderClusters() {
  fill("clusters", state.clusters.map(({ cluster: c, jobs }) => {
    const list = el("ul", null, "jobs");
    for (const j of jobs) {
      const li = el("li", `${j.job_id} ${j.name} `);
      li.append(el("span", j.status, "s-" + j.status));
      list.append(li);
    }
    const cell = el("td");
    cell.append(jobs.length ? list : el("span", "no running jobs", "empty"));
    const autostop = c.autostop >= 0 ? `${c.autostop} min${c.autostop_down ? " (down)" : ""}` : "";
    const tr = row([c.name, c.user, status(c.status), c.infra, c.num_nodes, c.resources || "",
                    autostop, cell]);
    tr.dataset.cluster = c.name;
    return tr;
  }), "no clusters");
}

function renderManaged() {
  fill("managed", state.managed.map((j) => {
    const tr = row([j.job_id, j.name, j.user, status(j.status), j.infra, j.attempt || 0,
                    j.recoveries || 0, ago(j.submitted_at), el("td", j.reason || "", "reason")]);
    tr.dataset.job = j.job_id;
    return tr;
  }), "no managed jobs");
}

function renderHosts() {
  fill("hosts", state.hosts.map((h) => {
    const health = h.error ? el("td", h.error, "error s-down") : el("td", "answering", "s-live");
    return row([h.pool, h.address, h.cluster || "free", health,
                h.shared_login ? "shared (no isolation)" : "per user"]);
  }), "no ssh node pools");
}

function render() {
  $("version").textContent = `v${state.version}`;
  $("ready").textContent = state.ready ? "ready" : "not ready";
  $("ready").className = "badge s-" + (state.ready ? "ready" : "starting");
  renderQueues();
  renderRequests();
  renderClusters();
  renderManaged();
  renderHosts();
}

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("hello", (e) => {
    const me = JSON.parse(e.data);
    $("viewer").textContent = `${me.user}${me.admin ? " (admin: every user's work)" : ""}`;
  });
  events.addEventListener("state", (e) => {
    state = JSON.parse(e.data);
    render();
  });
  events.onopen = () => { $("link").textContent = "live"; $("link").className = "badge s-live"; };
  events.onerror = () => {
    $("link").textContent = "reconnecting…";
    $("link").className = "badge s-down";
    // The browser retries a dropped stream itself, but not one refused with an error
    // status (503 while the daemon starts or drains): try again a little later. Off
    // loopback a 401 (no token, or it was revoked or expired) means: log in again.
    if (events.readyState !== EventSource.CLOSED) return;
    fetch("/api/me").then((r) => {
      if (r.status === 401) window.location.assign("/login");
      else setTimeout(connect, 2000);
    }, () => setTimeout(connect, 2000));
  };
}

// ---- a request's log ---------------------------------------------------------------------

function appendLog(text, cls) {
  const log = $("log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  const node = cls ? el("span", text + "\n", cls) : document.createTextNode(text);
  log.append(node);
  logLength += node.textContent.length;
  while (logLength > LOG_KEEP && log.firstChild) {
    logLength -= log.firstChild.textContent.length;
    log.firstChild.remove();
  }
  if (atEnd) log.scrollTop = log.scrollHeight;
}

function openLog(id) {
  closeLog();
  selected = id;
  $("log-section").hidden = false;
  $("log-id").textContent = id;
  $("log-status").textContent = "following";
  $("log").replaceChildren();
  logLength = 0;
  for (const tr of $("requests").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === id);
  logStream = new EventSource(`/api/requests/${encodeURIComponent(id)}/log`);
  logStream.addEventListener("log", (e) => appendLog(JSON.parse(e.data)));
  logStream.addEventListener("notice", (e) => appendLog(JSON.parse(e.data), "notice"));
  logStream.addEventListener("end", (e) => {
    const end = JSON.parse(e.data);
    $("log-status").textContent = end.status || "gone";
    $("log-status").className = "badge s-" + end.status;
    if (end.error) appendLog(end.error, "notice");
    logStream.close();
  });
}

function closeLog() {
  if (logStream) logStream.close();
  logStream = null;
  selected = null;
  $("log-section").hidden = true;
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["filter-status", "filter-user", "filter-op"]) {
    $(id).addEventListener("change", () => state && renderRequests());
  }
  $("log-close").addEventListener("click", () => { closeLog(); if (state) renderRequests(); });
  connect();
});
