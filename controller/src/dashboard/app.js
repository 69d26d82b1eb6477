// The Argus dashboard: the fleet at a glance, live from the controller's event stream, and one
// session's history, screen and commands. Plain JavaScript, no build step, no framework. Every
// text from the fleet (session names, reasons, screens) goes into the page as text, never HTML.
"use strict";

const $ = (id) => document.getElementById(id);

const app = {
  token: sessionStorage.getItem("argus-token") || "",
  me: null,
  view: { name: "fleet", q: null },
  refreshTimer: null,
  streaming: false,
};

// === HTTP ===

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (app.token) h["Authorization"] = "Bearer " + app.token;
  return h;
}

async function api(path, body) {
  const init = { cache: "no-store", headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) {
    init.method = "POST";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let data = null;
  try {
    data = await r.json();
  } catch (_) {
    data = null;
  }
  if (!r.ok) {
    const e = new Error((data && data.error) || r.status + " " + r.statusText);
    e.status = r.status;
    throw e;
  }
  return data;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// === DOM helpers ===

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k in e) e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function badge(kind, value) {
  return el("span", { class: "badge " + kind + "-" + (value || "none") }, value ? value.replace(/_/g, " ") : "-");
}

function ago(ms) {
  if (!ms) return "-";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function when(ms) {
  return el("time", { title: ms ? new Date(ms).toISOString() : "" }, ago(ms));
}

function sessionLink(s) {
  const q = new URLSearchParams({ node: s.node, name: s.name });
  if (s.socket) q.set("socket", s.socket);
  return "#/session?" + q.toString();
}

function show(section) {
  for (const id of ["login", "fleet", "session"]) $(id).hidden = id !== section;
}

// === Fleet ===

function renderTiles(counts) {
  const t = $("tiles");
  t.replaceChildren(
    el("span", { class: "tile" }, el("b", {}, counts.nodes_up + "/" + counts.nodes), " nodes up"),
    el("span", { class: "tile" }, el("b", {}, counts.sessions), " sessions"),
    ...Object.entries(counts.by_state).map(([state, n]) =>
      el("span", { class: "tile state-" + state, "data-count": state }, el("b", {}, n), " " + state)),
    el("span", { class: "tile" + (counts.incidents ? " alarm" : "") }, el("b", {}, counts.incidents), " incidents"),
  );
}

function renderFleet(f) {
  renderTiles(f.counts);
  $("nodes").tBodies[0].replaceChildren(...f.nodes.map((n) =>
    el("tr", { "data-node": n.node },
      el("td", {}, n.node, n.hostname && n.hostname !== n.node ? el("span", { class: "quiet" }, " " + n.hostname) : null),
      el("td", {}, badge("health", n.connected ? n.health : "down")),
      el("td", {}, n.sessions),
      el("td", { class: "quiet" }, n.agent_version),
      el("td", {}, when(n.last_seen_ms)))));
  $("incidents").tBodies[0].replaceChildren(...f.incidents.map((i) =>
    el("tr", { "data-incident": i.id },
      el("td", {}, badge("incident", i.kind)),
      el("td", {}, i.scope),
      el("td", {}, i.summary, i.acked_by ? el("span", { class: "quiet" }, " (acked by " + i.acked_by + ")") : null),
      el("td", {}, when(i.opened_ms)))));
  $("incidents").hidden = f.incidents.length === 0;
  $("no-incidents").hidden = f.incidents.length !== 0;
  $("sessions").tBodies[0].replaceChildren(...f.sessions.map((s) =>
    el("tr", { "data-session": s.node + "/" + s.name, "data-node": s.node, "data-name": s.name, "data-state": s.state, "data-condition": s.condition },
      el("td", { class: "nowrap" }, s.node),
      el("td", { class: "nowrap" }, el("a", { href: sessionLink(s) }, s.name)),
      el("td", { class: "state" }, badge("state", s.state)),
      el("td", {}, badge("cond", s.condition)),
      el("td", {}, s.agent || "", s.agent_pid ? el("span", { class: "quiet" }, " " + s.agent_pid) : null),
      el("td", { class: "why" }, s.reason),
      el("td", { class: "nowrap" }, when(s.last_change_ms)))));
  $("no-sessions").hidden = f.sessions.length !== 0;
}

async function loadFleet() {
  renderFleet(await api("/api/fleet"));
}

// === Session ===

function fact(dt, dd) {
  return [el("dt", {}, dt), el("dd", {}, dd)];
}

function renderSession(d) {
  const s = d.session || {};
  $("s-title").replaceChildren(s.name || app.view.q.name, el("span", { class: "quiet" }, " on " + (s.node || app.view.q.node)), " ", badge("state", s.state), " ", badge("cond", s.condition));
  const labels = Object.entries(s.labels || {}).map(([k, v]) => k + "=" + v).join("  ");
  $("s-facts").replaceChildren(
    ...fact("why", s.reason || "-"),
    ...fact("agent", (s.agent || "-") + (s.agent_pid ? " (pid " + s.agent_pid + ")" : "") + (s.profile ? ", profile " + s.profile : "")),
    ...fact("last activity", when(s.last_activity_ms)),
    ...fact("decided by", s.decided_by || "-"),
    ...fact("acted on because", s.acted_on_because || "-"),
    ...fact("people attached", String(s.attached_clients || 0)),
    ...fact("tmux socket", s.socket || "-"),
    ...fact("labels", labels || "-"),
  );
  const items = [];
  for (const t of d.transitions) {
    items.push({ at: t.at_ms, kind: "transition", what: [badge("state", t.from), " \u2192 ", badge("state", t.to)], why: t.reason });
  }
  for (const c of d.commands) {
    items.push({ at: c.issued_at_ms, kind: "command", what: [el("b", {}, c.action), " (" + c.origin + ") ", badge("status", c.status || "pending")], why: c.reason });
  }
  for (const k of d.checkpoints) {
    items.push({ at: k.taken_at_ms, kind: "checkpoint", what: [el("b", {}, "checkpoint"), " " + k.trigger], why: k.saved_ref || k.reason });
  }
  for (const h of d.handoffs) {
    items.push({ at: h.started_ms, kind: "handoff", what: [el("b", {}, "handoff"), " " + h.reason + ": " + h.state], why: h.message });
  }
  items.sort((a, b) => b.at - a.at);
  $("timeline").replaceChildren(...items.map((i) =>
    el("li", { class: "tl-" + i.kind }, when(i.at), " ", ...i.what, i.why ? el("div", { class: "why" }, i.why) : null)));
  $("commands").tBodies[0].replaceChildren(...d.commands.map((c) =>
    el("tr", { "data-command": c.command_id, "data-action": c.action },
      el("td", { class: "nowrap" }, when(c.issued_at_ms)),
      el("td", {}, c.action),
      el("td", {}, c.origin),
      el("td", {}, badge("status", c.status || "pending")),
      el("td", { class: "why" }, c.result_message))));
}

async function loadSession() {
  const [d, f] = await Promise.all([
    api("/api/session?" + new URLSearchParams(app.view.q)),
    // The counts stay in the header on a session's page too.
    api("/api/fleet"),
  ]);
  renderSession(d);
  renderTiles(f.counts);
  if (app.captureOnLoad) {
    app.captureOnLoad = false;
    // A gone session has no screen; a capture would only add a refused command to its audit.
    if (d.session && d.session.state !== "dead") capture();
  }
}

function target() {
  const q = app.view.q;
  return { node: q.node, name: q.name, socket: q.socket || "" };
}

async function capture() {
  const box = $("s-screen-box");
  box.hidden = false;
  $("screen-at").textContent = "capturing\u2026";
  try {
    const r = await api("/api/command", Object.assign(target(), { action: "capture", lines: 40 }));
    const pre = $("screen");
    pre.textContent = r.output || r.message;
    // The prompt and the newest lines are at the bottom.
    pre.scrollTop = pre.scrollHeight;
    $("screen-at").textContent = r.status === "ok" ? "at " + new Date().toLocaleTimeString() : r.status + ": " + r.message;
  } catch (e) {
    $("screen-at").textContent = "capture failed: " + e.message;
  }
}

function confirmDialog(text) {
  return new Promise((resolve) => {
    const d = $("confirm");
    $("confirm-text").textContent = text;
    const done = (answer) => {
      $("confirm-yes").onclick = null;
      $("confirm-no").onclick = null;
      d.onclose = null;
      if (d.open) d.close();
      resolve(answer);
    };
    $("confirm-yes").onclick = () => done(true);
    $("confirm-no").onclick = () => done(false);
    d.onclose = () => done(false);
    d.showModal();
  });
}

const QUESTIONS = {
  nudge: (s, text) => "Type \u201c" + text + "\u201d into " + s.name + " on " + s.node + " and press Enter?",
  interrupt: (s) => "Interrupt the agent of " + s.name + " on " + s.node + "?",
  restart: (s) => "Restart " + s.name + " on " + s.node + " with its own command? A checkpoint is taken first.",
  kill: (s) => "Kill " + s.name + " on " + s.node + "? Argus will not restart it. A checkpoint is taken first.",
};

async function act(action) {
  const s = target();
  const text = $("nudge-text").value.trim();
  if (action === "nudge" && !text) {
    $("s-result").textContent = "A nudge needs a text.";
    return;
  }
  if (!(await confirmDialog(QUESTIONS[action](s, text)))) {
    $("s-result").textContent = action + " cancelled.";
    return;
  }
  $("s-result").textContent = action + " sent\u2026";
  try {
    const r = await api("/api/command", Object.assign(s, { action, text }));
    $("s-result").textContent = action + ": " + r.status + (r.message ? " \u2014 " + r.message : "");
  } catch (e) {
    $("s-result").textContent = action + " refused: " + e.message;
  }
  scheduleRefresh(0);
}

// === Live events ===

function logEvent(ev) {
  const log = $("eventlog");
  $("ev-empty")?.remove();
  const where = ev.session ? ev.node + "/" + ev.session : ev.node || "controller";
  log.prepend(el("li", { class: "ev-" + ev.kind }, el("time", {}, new Date(ev.at_ms).toLocaleTimeString()), " ", el("b", {}, where), " " + ev.kind + ": " + ev.message));
  while (log.children.length > 60) log.lastChild.remove();
}

function onEvent(ev) {
  logEvent(ev);
  if (ev.state && ev.session) {
    // A transition says the new state: shown at once, the rest follows with the refresh.
    for (const row of document.querySelectorAll("#sessions tr[data-session]")) {
      if (row.dataset.node === ev.node && row.dataset.name === ev.session) {
        row.dataset.state = ev.state;
        row.querySelector("td.state").replaceChildren(badge("state", ev.state));
        row.classList.remove("flash");
        void row.offsetWidth;
        row.classList.add("flash");
      }
    }
  }
  const here = app.view.name === "fleet" || (app.view.q && ev.node === app.view.q.node && (!ev.session || ev.session === app.view.q.name));
  if (here || ev.kind === "lagged") scheduleRefresh(ev.kind === "lagged" ? 0 : 250);
}

function setLive(on) {
  const l = $("live");
  l.className = "live " + (on ? "on" : "off");
  l.textContent = on ? "live" : "offline";
}

function parseBlock(block) {
  let data = "";
  let type = "message";
  for (const line of block.split("\n")) {
    if (line.startsWith("data:")) data += (data ? "\n" : "") + line.slice(5).replace(/^ /, "");
    else if (line.startsWith("event:")) type = line.slice(6).trim();
  }
  if (data && type === "message") {
    try {
      onEvent(JSON.parse(data));
    } catch (e) {
      console.warn("bad event", e, data);
    }
  }
}

// Server-sent events read with fetch (EventSource cannot send the bearer token); reconnects with
// a jittered pause and refreshes what changed while away.
async function stream() {
  if (app.streaming) return;
  app.streaming = true;
  for (;;) {
    try {
      const r = await fetch("/api/events", { cache: "no-store", headers: headers() });
      if (r.status === 401) {
        app.streaming = false;
        setLive(false);
        return showLogin("The token was refused.");
      }
      if (!r.ok) throw new Error(r.status + " " + r.statusText);
      setLive(true);
      scheduleRefresh(0);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n/g, "\n");
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          parseBlock(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (e) {
      console.warn("event stream:", e.message);
    }
    setLive(false);
    await sleep(1000 + Math.random() * 1000);
  }
}

// === Views ===

// A busy fleet sends many events: refetches are spaced by at least four times what the last
// one cost (a large fleet's listing is not fetched every 250 ms), transitions show at once anyway.
function scheduleRefresh(ms) {
  clearTimeout(app.refreshTimer);
  const wait = Math.max(ms, (app.nextRefreshAt || 0) - Date.now());
  app.refreshTimer = setTimeout(refresh, wait);
}

async function refresh() {
  const began = performance.now();
  try {
    if (app.view.name === "session") await loadSession();
    else await loadFleet();
    app.nextRefreshAt = Date.now() + 4 * (performance.now() - began);
  } catch (e) {
    if (e.status === 401) return showLogin(e.message);
    $("s-result").textContent = "";
    console.warn("refresh:", e.message);
  }
}

function route() {
  const hash = location.hash || "#/";
  app.nextRefreshAt = 0;
  if (hash.startsWith("#/session?")) {
    const q = Object.fromEntries(new URLSearchParams(hash.slice("#/session?".length)));
    app.view = { name: "session", q };
    $("s-result").textContent = "";
    $("screen").textContent = "";
    $("s-screen-box").hidden = true;
    $("timeline").replaceChildren();
    $("commands").tBodies[0].replaceChildren();
    show("session");
    app.captureOnLoad = Boolean(app.me && app.me.can_capture);
  } else {
    app.view = { name: "fleet", q: null };
    show("fleet");
  }
  scheduleRefresh(0);
}

function showLogin(message) {
  show("login");
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function start() {
  try {
    app.me = await api("/api/whoami");
  } catch (e) {
    if (e.status === 401) return showLogin(app.token ? e.message : "");
    show("login");
    $("login-error").textContent = "The controller refused: " + e.message;
    return;
  }
  $("who").textContent = app.me.name + " (" + app.me.role + ")";
  for (const b of document.querySelectorAll("#s-actions button[data-action]")) b.disabled = !app.me.can_act;
  $("nudge-text").disabled = !app.me.can_act;
  $("capture").disabled = !app.me.can_capture;
  $("s-role").textContent = app.me.can_act ? "" : "Viewers can look; actions need the operator role.";
  route();
  stream();
}

function useToken() {
  app.token = $("token").value.trim();
  sessionStorage.setItem("argus-token", app.token);
  start();
}

document.addEventListener("DOMContentLoaded", () => {
  window.addEventListener("hashchange", route);
  for (const b of document.querySelectorAll("#s-actions button[data-action]")) {
    b.addEventListener("click", () => act(b.dataset.action));
  }
  $("capture").addEventListener("click", capture);
  $("token-use").addEventListener("click", useToken);
  $("token").addEventListener("keydown", (e) => {
    if (e.key === "Enter") useToken();
  });
  // Relative times move on without a refresh.
  setInterval(() => {
    for (const t of document.querySelectorAll("time[title]")) {
      const ms = Date.parse(t.title);
      if (ms) t.textContent = ago(ms);
    }
  }, 5000);
  start();
});
