// The sipmob page: draws the snapshot embedded in the page, then follows /events (server-sent
// events) and sends actions to /api/action with the session's CSRF token. Every value from the
// network goes into the page as text (textContent), never as markup.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const initial = JSON.parse(document.getElementById("state").textContent);
const state = {
  devices: new Map((initial.devices || []).map((d) => [d.uri, d])),
  devicesError: initial.devices_error,
  calls: initial.calls,
  callsError: initial.calls_error,
  health: initial.health || {},
  actions: [],
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
  }
  return node;
}

function duration(since) {
  if (!since) return "";
  const s = Math.max(0, Math.round(Date.now() / 1000 - since));
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : `${m}:${String(s % 60).padStart(2, "0")}`;
}

function handles(device, media) {
  return (device.media || []).some((m) => m.startsWith(media + "-"));
}

function devicesList() {
  return [...state.devices.values()];
}

async function act(body, button) {
  if (button) button.disabled = true;
  try {
    const response = await fetch("/api/action", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    if (response.status === 401) location.href = "/login";
  } catch (e) {
    addAction({ id: "local" + Date.now(), state: "failed", text: "The gateway did not answer: " + e });
  } finally {
    if (button) button.disabled = false;
  }
}

function addAction(a) {
  const known = state.actions.find((x) => x.id === a.id);
  if (known) Object.assign(known, a); else state.actions.unshift(a);
  state.actions = state.actions.slice(0, 8);
  drawActions();
}

function drawActions() {
  const list = document.getElementById("actions");
  list.replaceChildren(...state.actions.map((a) => el("li", { class: a.state, "data-state": a.state }, a.text)));
  document.getElementById("actions-section").hidden = state.actions.length === 0;
}

function statusText(c) {
  const since = c.state === "ringing" ? `ringing for ${Math.round(c.ringing_for || 0)} s` : duration(c.since);
  return `call ${c.id} · ${c.state}${since ? " · " + since : ""}`;
}

function counterText(c) {
  return `RTP sent ${c.rtp_sent || 0}, received ${c.rtp_received || 0}`;
}

function callCard(c) {
  const card = el("div", { class: "card call", "data-call": c.id, "data-state": c.state });
  const who = c.display ? `${c.display} <${c.peer}>` : c.peer;
  card.append(el("div", { class: "peer" }, who));
  card.append(el("div", { class: "muted", "data-status": "" }, statusText(c)));
  if (c.state === "ringing") {
    card.append(el("button", { "data-action": "answer", onclick: (e) => act({ action: "answer", call: c.id }, e.target) }, "Answer"));
    card.append(el("button", { class: "danger", "data-action": "reject", onclick: (e) => act({ action: "reject", call: c.id }, e.target) }, "Reject"));
    return card;
  }
  const where = (c.streams || []).map((s) => `${s.media}: ${s.where}`).join(" · ") || "no media";
  card.append(el("div", { class: "where", "data-where": "" }, where));
  card.append(el("div", { class: "muted", "data-counters": "" }, counterText(c)));
  const away = (c.streams || []).some((s) => s.where !== "this phone");
  if (away) {
    card.append(el("button", { class: "secondary", "data-action": "retrieve", onclick: (e) => act({ action: "retrieve", call: c.id }, e.target) }, "Bring back"));
  }
  const displays = devicesList().filter((d) => d.up && (d.media || []).some((m) => m === "video-recvonly" || m === "video-sendrecv"));
  const cameras = devicesList().filter((d) => d.up && (d.media || []).some((m) => m === "video-sendonly" || m === "video-sendrecv"));
  if (displays.length && cameras.length) {
    const out = el("select", { "aria-label": "video to", "data-split": "out" }, ...displays.map((d) => el("option", { value: d.uri }, d.name)));
    const inn = el("select", { "aria-label": "video from", "data-split": "in" }, ...cameras.map((d) => el("option", { value: d.uri }, d.name)));
    const audio = el("select", { "aria-label": "audio to", "data-split": "audio" }, el("option", { value: "" }, "audio stays"),
      ...devicesList().filter((d) => d.up && handles(d, "audio")).map((d) => el("option", { value: d.uri }, d.name)));
    card.append(el("div", {}, out, inn, audio,
      el("button", { class: "secondary", "data-action": "split", onclick: (e) => act({ action: "split", call: c.id, video_out: out.value, video_in: inn.value, audio: audio.value || null }, e.target) }, "Split")));
  }
  card.append(el("button", { class: "danger", "data-action": "hangup", onclick: (e) => act({ action: "hangup", call: c.id }, e.target) }, "Hang up"));
  return card;
}

let drawnShape = null;

function callsShape() {
  // Everything a call card shows but its counters: when only the counters moved, the cards stay
  // (and so do what the person picked and the element a finger is on).
  const calls = (state.calls || []).map(({ rtp_sent, rtp_received, video_received, ringing_for, ...rest }) => rest);
  const devices = devicesList().map((d) => [d.uri, d.up, d.name, d.media]);
  return JSON.stringify([state.callsError, calls, devices]);
}

function drawCalls() {
  const box = document.getElementById("calls");
  const shape = callsShape();
  if (shape === drawnShape) {
    for (const c of state.calls || []) {
      const card = box.querySelector(`.call[data-call="${CSS.escape(c.id)}"]`);
      const counters = card && card.querySelector("[data-counters]");
      if (counters) counters.textContent = counterText(c);
      const status = card && card.querySelector("[data-status]");
      if (status) status.textContent = statusText(c);
    }
    return;
  }
  drawnShape = shape;
  // A redraw keeps what the person picked in the split lists.
  const picked = new Map([...box.querySelectorAll("select")].map((s) => [s.closest("[data-call]").dataset.call + s.dataset.split, s.value]));
  drawCallCards(box);
  for (const s of box.querySelectorAll("select")) {
    const value = picked.get(s.closest("[data-call]").dataset.call + s.dataset.split);
    if (value !== undefined && [...s.options].some((o) => o.value === value)) s.value = value;
  }
}

function drawCallCards(box) {
  if (state.callsError) {
    box.replaceChildren(el("p", { class: "empty" }, state.callsError));
  } else if (!state.calls || state.calls.length === 0) {
    box.replaceChildren(el("p", { class: "empty" }, "No calls."));
  } else {
    box.replaceChildren(...state.calls.map(callCard));
  }
}

function activeCalls() {
  return (state.calls || []).filter((c) => c.state !== "ringing" && c.state !== "terminated");
}

// With several calls, one list above the rooms says which call "Move here" moves: one button per
// device, not one per device and call.
function movingCall() {
  const calls = activeCalls();
  return calls.find((c) => c.id === state.moving) || calls[0];
}

function deviceRow(d) {
  const row = el("div", { class: "device" + (d.up ? "" : " down"), "data-device": d.uri });
  row.append(el("div", { class: "name" }, d.name), el("span", { class: "tag " + (d.up ? "up" : "down") }, d.up ? "up" : "down"));
  for (const m of d.media || []) row.append(el("span", { class: "tag" }, m));
  const codecs = [...(d.audio_codecs || []), ...(d.video_codecs || [])].join(", ");
  if (codecs) row.append(el("div", { class: "muted" }, codecs));
  if (d.members && d.members.length) row.append(el("div", { class: "muted" }, "combines: " + d.members.join(", ")));
  const call = movingCall();
  if (call && d.up && (handles(d, "audio") || handles(d, "video"))) {
    const label = activeCalls().length > 1 ? `Move call ${call.id} here` : "Move here";
    row.append(el("button", { "data-action": "transfer", "data-call": call.id, "data-to": d.uri,
      onclick: (e) => act({ action: "transfer", call: call.id, to: d.uri, label: d.name, media: "all" }, e.target) }, label));
  }
  return row;
}

let roomsDrawn = null;

function drawRooms() {
  // Rebuilt only when what the rooms show changes (not on every counter update of a call).
  const shape = JSON.stringify([devicesList(), activeCalls().map((c) => [c.id, c.display, c.peer]),
    movingCall() && movingCall().id, state.devicesError]);
  if (shape === roomsDrawn) return;
  roomsDrawn = shape;
  const rooms = new Map();
  for (const d of devicesList()) {
    const room = d.room || "no room";
    if (!rooms.has(room)) rooms.set(room, []);
    rooms.get(room).push(d);
  }
  const box = document.getElementById("rooms");
  const calls = activeCalls();
  const picker = calls.length > 1 ? el("label", { class: "moving" }, "Move here moves ",
    el("select", { id: "moving", onchange: (e) => { state.moving = e.target.value; drawRooms(); } },
      ...calls.map((c) => el("option", { value: c.id, ...(movingCall().id === c.id ? { selected: "" } : {}) },
        `call ${c.id} with ${c.display || c.peer}`)))) : null;
  const cards = [...rooms.entries()].sort((a, b) => a[0].localeCompare(b[0])).map(([room, list]) =>
    el("div", { class: "card room", "data-room": room }, el("h3", {}, room), ...list.map(deviceRow)));
  if (state.devicesError) cards.unshift(el("p", { class: "empty" }, state.devicesError));
  if (cards.length === 0) cards.push(el("p", { class: "empty" }, "No devices registered."));
  box.replaceChildren(...(picker ? [picker] : []), el("div", { class: "grid" }, ...cards));
}

function drawHealth() {
  const h = state.health || {};
  const box = document.getElementById("health");
  if (!h.da) { box.replaceChildren(el("p", { class: "empty" }, "Checking…")); return; }
  const da = h.da.reachable ? `reachable (${h.da.round_trip_ms} ms), ${h.da.registrations} devices registered`
    : `not answering${h.da.error ? " (" + h.da.error + ")" : ""}`;
  const rows = [el("tr", {}, el("th", {}, "Directory agent"), el("td", { "data-health": "da" }, da))];
  for (const u of h.units || []) rows.push(el("tr", {}, el("th", {}, u.unit), el("td", {}, u.state + (u.status ? " · " + u.status : ""))));
  const parts = [el("table", {}, ...rows)];
  if (h.journal && h.journal.length) parts.push(el("pre", {}, h.journal.join("\n")));
  else if (h.journal === null) parts.push(el("p", { class: "muted" }, "The journal is not readable by this daemon."));
  box.replaceChildren(...parts);
}

function drawAll() { drawCalls(); drawRooms(); drawHealth(); drawActions(); }

function follow() {
  const live = document.getElementById("live");
  const events = new EventSource("/events");
  events.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  events.onerror = () => {
    live.textContent = "reconnecting…"; live.className = "live off";
    fetch("/api/state", { credentials: "same-origin" }).then((r) => { if (r.status === 401) location.href = "/login"; });
  };
  events.addEventListener("devices", (e) => {
    const diff = JSON.parse(e.data);
    if (diff.reset) state.devices.clear();
    for (const d of diff.set || []) state.devices.set(d.uri, d);
    for (const uri of diff.remove || []) state.devices.delete(uri);
    state.devicesError = diff.error;
    drawRooms(); drawCalls();
  });
  events.addEventListener("calls", (e) => {
    const data = JSON.parse(e.data);
    state.calls = data.calls; state.callsError = data.error;
    drawCalls(); drawRooms();
  });
  events.addEventListener("health", (e) => { state.health = JSON.parse(e.data); drawHealth(); });
  events.addEventListener("action", (e) => addAction(JSON.parse(e.data)));
}

document.getElementById("dial").addEventListener("submit", (e) => {
  e.preventDefault();
  const uri = document.getElementById("dial-uri").value.trim();
  if (uri) act({ action: "call", uri: uri }, document.getElementById("dial-button"));
});

drawAll();
performance.mark("sipmob-drawn"); // tests/bench/bench_web.py reads when the first drawing was done
follow();
setInterval(() => { drawCalls(); }, 1000); // durations move on between events; nothing is rebuilt
