// Demo client: negotiate through the app, connect with @microsoft/signalr; presence with statuses and last-seen
// times, direct and room messages, and an inspector of every online user's connections.
"use strict";

const $ = (id) => document.getElementById(id);

const ROOM_NAME = /^[A-Za-z0-9._-]{1,64}$/; // the app's rule for room names
const MAX_STATUS_CHARACTERS = 64; // counted in code points after NFC, as the app counts them
const MAX_ROOMS = 100;
const INSPECT_EVERY_MS = 3000; // the inspector's refresh while it is open and the page is visible
const CLOCK_EVERY_MS = 5000; // relative times ("2 minutes ago") are redrawn this often
const RETRY_AFTER_MS = 1000; // a join or leave answered "retry" is sent once more after this delay
const PENDING_FOR_MS = 15000; // a join or leave unconfirmed for longer is forgotten
const INSPECTED_USERS = 25; // at most this many users' connections are fetched per refresh
const ROOM_PAGES = 5; // at most this many pages of a room's members are read
const MAX_WATCHED = 100; // the app's limit of users per watch call

let connection = null;
let me = null; // { user, key } while connected
let heard = 0; // orders what the page learned: presence messages and HTTP answers (by when they were asked)
let refreshing = false;
// Users this connection watches: with PRESENCE_AUDIENCE=scoped a page hears only its rooms and the users it watches.
let watched = new Set();

// What the page knows of each user, by key (user names compare case-insensitively):
// { user, online, connections, status, lastSeen, version, at, details, detailsAt }. `version` is the highest
// presence version seen; `at` is when the state shown was learned (an HTTP answer counts from when it was asked).
const people = new Map();
// Joined rooms: room → { element, members: Map(key → name), changedAt: Map(key → heard), list, messages, note }.
const rooms = new Map();
// join and leave calls not yet confirmed by a `room` message: { method, room, retried, at }.
let pending = [];

// Locale-independent, as the app compares names (it casefolds; a few letters such as "ß" fold differently).
const keyOf = (user) => String(user).normalize("NFC").toLowerCase();

function person(user) {
  const key = keyOf(user);
  let entry = people.get(key);
  if (!entry) {
    entry = { user, online: false, connections: 0, status: null, lastSeen: null, version: 0, at: 0 };
    entry.details = null;
    entry.detailsAt = 0;
    people.set(key, entry);
  }
  return entry;
}

// A presence message: kept only when its version is higher than any seen for the user.
function applyPresence(message) {
  if (!message || typeof message.user !== "string" || typeof message.version !== "number") return false;
  const entry = person(message.user);
  if (message.version <= entry.version) return false;
  const online = message.online === true;
  Object.assign(entry, {
    user: message.user,
    online,
    connections: typeof message.connections === "number" ? message.connections : online ? 1 : 0,
    status: online ? (message.status ?? null) : null,
    lastSeen: online ? null : (message.lastSeen ?? entry.lastSeen),
    version: message.version,
    at: ++heard,
  });
  return true;
}

// An HTTP answer (no version): kept unless the page heard something about the user after asking.
function applySnapshot(user, state, askedAt) {
  const entry = person(user);
  if (askedAt <= entry.at) return false;
  Object.assign(entry, { user }, state, { at: askedAt });
  if (entry.online) entry.lastSeen = null;
  return true;
}

async function getJson(path) {
  // The API needs a function key in Azure; the local host, like Core Tools, does not check keys.
  try {
    const response = await fetch(path, { headers: { accept: "application/json" } });
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

// ---- relative times ------------------------------------------------------------------------------

const relative = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
const UNITS = [
  ["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60],
];

function ago(iso) {
  const seconds = Math.round((Date.parse(iso) - Date.now()) / 1000);
  if (Number.isNaN(seconds)) return "at an unknown time";
  if (seconds > -10) return "just now";
  for (const [unit, size] of UNITS) {
    if (-seconds >= size) return relative.format(Math.round(seconds / size), unit);
  }
  return relative.format(seconds, "second");
}

function timeElement(iso, text) {
  const time = document.createElement("time");
  time.dateTime = iso;
  time.title = new Date(iso).toLocaleString();
  time.textContent = text ?? ago(iso);
  return time;
}

function element(tag, { className, text, data } = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(data ?? {})) node.dataset[name] = String(value);
  return node;
}

const plural = (count, word) => `${count} ${word}${count === 1 ? "" : "s"}`;

// Replaces a container's children only when they differ: lists are redrawn every few seconds, and an unchanged
// list must not be announced again by screen readers nor lose a text selection.
function show(container, nodes) {
  const html = nodes.map((node) => node.outerHTML).join("");
  if (container.innerHTML !== html) container.replaceChildren(...nodes);
}

// ---- connection state and messages --------------------------------------------------------------

function setConnectionState(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text ?? state;
  const connected = state === "connected";
  $("connect").disabled = connected;
  $("disconnect").disabled = !connected;
  $("name").disabled = connected;
  for (const id of ["send", "my-status", "set-status", "clear-status", "room-name", "join", "leave"]) {
    $(id).disabled = !connected;
  }
}

function addMessage(text, { from = null, error = false } = {}) {
  const item = document.createElement("li");
  if (error) item.className = "error";
  if (from !== null) item.append(element("span", { className: "from", text: `${from}: ` }));
  item.append(document.createTextNode(text));
  $("messages").prepend(item);
}

const messageText = (message) => (typeof message === "string" ? message : JSON.stringify(message));

// ---- who is online, and the inspector -----------------------------------------------------------

function onlinePeople() {
  return [...people.values()].filter((p) => p.online).sort((a, b) => keyOf(a.user).localeCompare(keyOf(b.user)));
}

function statusElement(status) {
  return element("span", { className: "user-status", text: status });
}

function renderUsers() {
  const online = onlinePeople();
  show(
    $("users"),
    online.map((p) => {
      const item = element("li", { data: { user: p.user, connections: p.connections } });
      item.append(element("span", { className: "name", text: p.user }));
      if (me && keyOf(p.user) === me.key) item.append(element("span", { className: "you", text: " (you)" }));
      item.append(element("span", { className: "count", text: ` · ${plural(p.connections, "connection")}` }));
      if (p.status) item.append(statusElement(p.status));
      return item;
    }),
  );
  const offline = [...people.values()]
    .filter((p) => !p.online && p.lastSeen)
    .sort((a, b) => Date.parse(b.lastSeen) - Date.parse(a.lastSeen))
    .slice(0, 20);
  show(
    $("offline"),
    offline.map((p) => {
      const item = element("li", { data: { user: p.user } });
      item.append(element("span", { className: "name", text: p.user }), " ");
      const seen = element("span", { className: "last-seen", text: "last seen " });
      seen.append(timeElement(p.lastSeen));
      item.append(seen);
      return item;
    }),
  );
}

function inspectorOpen() {
  return $("inspector").open && document.visibilityState === "visible";
}

function renderInspector() {
  if (!$("inspector").open) return;
  const online = onlinePeople();
  if (online.length === 0) {
    show($("inspector-users"), [element("p", { className: "note", text: "Nobody is online." })]);
    return;
  }
  show(
    $("inspector-users"),
    online.map((p) => {
      const data = { user: p.user, connections: p.connections };
      const section = element("section", { className: "inspected", data });
      section.setAttribute("aria-label", `Connections of ${p.user}`);
      const heading = element("h3", { text: p.user });
      heading.append(element("span", { className: "count", text: ` · ${plural(p.connections, "connection")}` }));
      if (p.status) heading.append(statusElement(p.status));
      section.append(heading);
      if (!p.details) {
        section.append(element("p", { className: "note", text: "loading…" }));
        return section;
      }
      const rooms = p.details.rooms ?? [];
      section.append(element("p", { className: "rooms", text: `Rooms: ${rooms.length ? rooms.join(", ") : "none"}` }));
      const table = document.createElement("table");
      table.append(element("caption", { text: `Live connections of ${p.user} (as last fetched)` }));
      const head = document.createElement("tr");
      for (const title of ["Connection id", "User agent", "Connected at", "Last seen", "Status"]) {
        const cell = element("th", { text: title });
        cell.scope = "col";
        head.append(cell);
      }
      table.append(element("thead"));
      table.tHead.append(head);
      const body = document.createElement("tbody");
      for (const c of p.details.connections ?? []) {
        const row = element("tr", { className: "connection", data: { connectionId: c.connectionId } });
        const id = element("td", { className: "connection-id", text: c.connectionId });
        if (connection && c.connectionId === connection.connectionId) {
          id.append(element("span", { className: "you", text: " (this tab)" }));
        }
        const connectedAt = element("td", { className: "connected-at" });
        const clock = new Date(c.connectedAt).toLocaleTimeString();
        connectedAt.append(timeElement(c.connectedAt, `${clock} (${ago(c.connectedAt)})`));
        const lastSeen = element("td", { className: "last-seen" });
        lastSeen.append(timeElement(c.lastSeen));
        row.append(
          id,
          element("td", { className: "user-agent", text: c.userAgent || "—" }),
          connectedAt,
          lastSeen,
          element("td", { className: "connection-status", text: c.status ?? "—" }),
        );
        body.append(row);
      }
      table.append(body);
      section.append(table);
      return section;
    }),
  );
}

function render() {
  renderUsers();
  for (const room of rooms.keys()) renderMembers(room);
  renderInspector();
}

// One user's presence and connections (GET /api/users/{user}).
async function inspect(user) {
  const entry = person(user);
  const askedAt = ++heard;
  const body = await getJson(`/api/users/${encodeURIComponent(user)}`);
  if (!body) return null;
  if (askedAt > entry.detailsAt) {
    entry.details = body;
    entry.detailsAt = askedAt;
  }
  const connections = Array.isArray(body.connections) ? body.connections.length : 0;
  const state = { online: body.online === true, connections, status: body.status ?? null };
  applySnapshot(body.user, { ...state, lastSeen: body.lastSeen ?? null }, askedAt);
  render();
  return body;
}

// Who is online (GET /api/users); users the page thought online but the list lacks are asked about, and so,
// unless `inspectAll` will, are users whose status the page does not know yet (the list has no statuses).
async function refreshUsers({ inspectAll = false } = {}) {
  const askedAt = ++heard;
  const body = await getJson("/api/users?limit=1000");
  if (!body || !Array.isArray(body.users)) return;
  const listed = new Set();
  for (const { user, connections } of body.users) {
    listed.add(keyOf(user));
    applySnapshot(user, { online: true, connections }, askedAt);
  }
  watchListed(body.users.map(({ user }) => user));
  const missing = body.next ? [] : [...people.entries()].filter(([key, p]) => p.online && !listed.has(key));
  for (const [, p] of missing) {
    if (applySnapshot(p.user, { online: false, connections: 0, status: null }, askedAt)) inspect(p.user);
  }
  render();
  if (inspectAll) return;
  const unknown = [...people.values()].filter((p) => p.online && !p.details).slice(0, INSPECTED_USERS);
  await Promise.all(unknown.map((p) => inspect(p.user)));
}

async function refreshAll() {
  if (refreshing) return;
  refreshing = true;
  try {
    await refreshUsers({ inspectAll: true });
    const online = [...people.values()].filter((p) => p.online).slice(0, INSPECTED_USERS);
    await Promise.all(online.map((p) => inspect(p.user)));
  } finally {
    refreshing = false;
  }
}

// Watch the listed users not yet watched (their changes reach this page; the answer is a presenceSync).
function watchListed(users) {
  if (!connection || !me) return;
  const fresh = users.filter((user) => !watched.has(keyOf(user))).slice(0, Math.max(0, MAX_WATCHED * 10 - watched.size));
  for (let i = 0; i < fresh.length; i += MAX_WATCHED) {
    const batch = fresh.slice(i, i + MAX_WATCHED);
    batch.forEach((user) => watched.add(keyOf(user)));
    connection.send("watch", batch).catch(() => batch.forEach((user) => watched.delete(keyOf(user))));
  }
}

// A snapshot (`presenceSync`, the answer to a watch or a join): each entry is a versioned presence state.
function onPresenceSync(sync) {
  const users = sync && Array.isArray(sync.users) ? sync.users : [];
  if (users.map(applyPresence).some(Boolean)) render();
}

function onPresence(message) {
  if (!applyPresence(message)) return;
  render();
  if (message.online && inspectorOpen()) inspect(message.user);
}

// ---- rooms ---------------------------------------------------------------------------------------

function roomProblem(name) {
  if (!ROOM_NAME.test(name)) return `"${name}" is not a room name: use 1 to 64 letters, digits, "-", "_" or "."`;
  return null;
}

function showRoomError(text) {
  $("room-error").textContent = text;
}

function roomCall(method, room, { retried = false } = {}) {
  if (!connection) return;
  pending.push({ method, room, retried, at: Date.now() });
  $("room-note").textContent = `${method === "join" ? "joining" : "leaving"} ${room}…`;
  connection.send(method, room).catch((error) => showRoomError(`${method} ${room}: ${error.message}`));
}

function confirmRoomCall(method, room) {
  const before = pending.length;
  pending = pending.filter((p) => !(p.method === method && p.room === room));
  if (pending.length !== before) $("room-note").textContent = `${method === "join" ? "joined" : "left"} ${room}`;
}

// An error with `retry: true` (storage failed): every join and leave still unconfirmed is sent once more after a
// short delay (both are idempotent, and the error does not say which call it answers); a second failure gives up.
function retryRoomCalls(error) {
  const now = Date.now();
  const due = pending.filter((p) => now - p.at < PENDING_FOR_MS);
  pending = [];
  for (const call of due) {
    if (call.retried) {
      showRoomError(`${call.method} ${call.room} failed again: ${error}; gave up, try again later`);
      continue;
    }
    showRoomError(`${call.method} ${call.room}: ${error}; retrying once`);
    setTimeout(() => roomCall(call.method, call.room, { retried: true }), RETRY_AFTER_MS);
  }
}

function openRoom(room) {
  if (rooms.has(room)) return rooms.get(room);
  const section = element("section", { className: "room", data: { room } });
  section.setAttribute("aria-label", `Room ${room}`);
  const heading = element("h3", { text: room });
  const leave = element("button", { className: "leave-room", text: "Leave" });
  leave.type = "button";
  leave.setAttribute("aria-label", `Leave room ${room}`);
  leave.addEventListener("click", () => roomCall("leave", room));
  const header = element("div", { className: "room-header" });
  header.append(heading, leave);
  const list = element("ul", { className: "members" });
  list.setAttribute("aria-label", `Members of ${room}`);
  const form = element("form", { className: "room-compose" });
  const label = element("label", { text: "Message " });
  const input = element("input", { className: "room-message" });
  input.autocomplete = "off";
  input.required = true;
  input.setAttribute("aria-label", `Message to room ${room}`);
  label.append(input);
  const send = element("button", { className: "send-room", text: "Send to room" });
  send.type = "submit";
  form.append(label, " ", send);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!connection || !input.value) return;
    connection
      .send("sendToRoom", room, input.value)
      .catch((error) => showRoomError(`sendToRoom ${room}: ${error.message}`));
    input.value = "";
  });
  const note = element("p", { className: "error room-error" });
  note.setAttribute("role", "alert");
  const messages = element("ul", { className: "room-messages" });
  messages.setAttribute("aria-label", `Messages in ${room}`);
  messages.setAttribute("aria-live", "polite");
  section.append(header, element("h4", { text: "Members" }), list, form, note, messages);
  const state = { element: section, members: new Map(), changedAt: new Map(), list, messages, note };
  rooms.set(room, state);
  const panels = [...rooms.keys()].sort();
  const next = panels[panels.indexOf(room) + 1];
  $("rooms").insertBefore(section, next ? rooms.get(next).element : null);
  loadMembers(room);
  return state;
}

function closeRoom(room) {
  rooms.get(room)?.element.remove();
  rooms.delete(room);
}

function renderMembers(room) {
  const state = rooms.get(room);
  if (!state) return;
  const members = [...state.members.entries()].sort(([a], [b]) => a.localeCompare(b));
  show(
    state.list,
    members.map(([key, name]) => {
      const p = people.get(key) ?? { user: name, online: false, connections: 0, status: null, lastSeen: null };
      const item = element("li", { data: { user: p.user, online: p.online, connections: p.connections } });
      item.append(element("span", { className: "name", text: p.user }), " ");
      if (p.online) {
        item.append(element("span", { className: "count", text: `online · ${plural(p.connections, "connection")}` }));
        if (p.status) item.append(statusElement(p.status));
      } else {
        const seen = element("span", { className: "last-seen", text: p.lastSeen ? "offline, last seen " : "offline" });
        if (p.lastSeen) seen.append(timeElement(p.lastSeen));
        item.append(seen);
      }
      return item;
    }),
  );
}

// A room's members (GET /api/rooms/{room}), merged with the `room` messages heard since asking.
async function loadMembers(room) {
  const askedAt = ++heard;
  const listed = new Map();
  let next = null;
  for (let page = 0; page < ROOM_PAGES; page++) {
    const query = next ? `?limit=1000&next=${encodeURIComponent(next)}` : "?limit=1000";
    const body = await getJson(`/api/rooms/${encodeURIComponent(room)}${query}`);
    if (!body || !Array.isArray(body.members)) return;
    for (const { user, online, connections, status, lastSeen } of body.members) {
      listed.set(keyOf(user), user);
      const state = { online: online === true, connections: connections ?? 0, status: status ?? null };
      applySnapshot(user, { ...state, lastSeen: lastSeen ?? null }, askedAt);
    }
    next = body.next;
    if (!next) break;
  }
  const state = rooms.get(room);
  if (!state) return;
  for (const [key, name] of listed) {
    if ((state.changedAt.get(key) ?? 0) < askedAt) state.members.set(key, name);
  }
  if (!next) {
    for (const key of [...state.members.keys()]) {
      if (!listed.has(key) && (state.changedAt.get(key) ?? 0) < askedAt) state.members.delete(key);
    }
  }
  renderMembers(room);
}

function onRoom(message) {
  if (!message || typeof message.room !== "string" || typeof message.user !== "string") return;
  const { room, user } = message;
  const joined = message.joined === true;
  const key = keyOf(user);
  const mine = me !== null && key === me.key;
  if (mine) confirmRoomCall(joined ? "join" : "leave", room);
  if (mine && !joined) {
    closeRoom(room);
    return;
  }
  const state = mine ? openRoom(room) : rooms.get(room); // a room is opened only by one's own join
  if (!state) return;
  state.changedAt.set(key, ++heard);
  if (joined) {
    state.members.set(key, user);
    if (!people.get(key)?.online) inspect(user);
  } else {
    state.members.delete(key);
  }
  renderMembers(room);
}

function onRoomMessage({ from, room, message }) {
  const state = rooms.get(room);
  const text = messageText(message);
  if (!state) {
    addMessage(`[${room}] ${text}`, { from: from ?? "(server)" });
    return;
  }
  const item = element("li");
  item.append(element("span", { className: "from", text: `${from ?? "(server)"}: ` }), document.createTextNode(text));
  state.messages.prepend(item);
}

// The rooms the user is in (GET /api/users/{me}): the page joins none itself on connecting.
async function loadMyRooms() {
  if (!me) return;
  const body = await inspect(me.user);
  if (!body || !me) return;
  for (const room of body.rooms ?? []) openRoom(room);
}

function onError(details) {
  const { error, to, room, retry } = details ?? {};
  const text = String(error ?? "unknown error");
  const shown = to ? `${text} (${to})` : room ? `${text} (${room})` : text;
  addMessage(shown, { error: true });
  if (room !== undefined || (to === undefined && pending.length > 0) || /\broom/i.test(text)) showRoomError(shown);
  if (room !== undefined && rooms.has(room)) rooms.get(room).note.textContent = text;
  if (/\bstatus\b/i.test(text)) $("status-error").textContent = text;
  if (retry === true) retryRoomCalls(text);
}

// ---- connecting ----------------------------------------------------------------------------------

function endSession() {
  me = null;
  pending = [];
  for (const room of [...rooms.keys()]) closeRoom(room);
  $("room-note").textContent = "";
}

async function connect(name) {
  connection = new signalR.HubConnectionBuilder()
    .withUrl("/api", { headers: { "x-ms-client-principal-name": name } })
    .configureLogging(signalR.LogLevel.Warning)
    .build();
  connection.on("newMessage", (payload) => {
    if (payload && typeof payload.room === "string" && !("to" in payload)) {
      onRoomMessage(payload);
      return;
    }
    const { from, message } = payload ?? {};
    addMessage(messageText(message), { from: from ?? "(server)" });
  });
  connection.on("presence", onPresence);
  connection.on("presenceSync", onPresenceSync);
  connection.on("room", onRoom);
  connection.on("error", onError);
  connection.onclose((error) => {
    setConnectionState(error ? "error" : "disconnected", error ? `disconnected: ${error.message}` : "disconnected");
    endSession();
    refreshUsers();
  });
  setConnectionState("connecting");
  try {
    await connection.start();
  } catch (error) {
    setConnectionState("error", `could not connect: ${error.message}`);
    return;
  }
  me = { user: name, key: keyOf(name) };
  watched = new Set();
  setConnectionState("connected", `connected as ${name}`);
  await refreshUsers();
  await loadMyRooms();
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("name").value.trim();
  if (name) connect(name);
});

$("disconnect").addEventListener("click", () => connection?.stop());

$("compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  const to = $("to").value.trim();
  const text = $("message").value;
  if (!to || !connection) return;
  await connection.send("send", to, text);
  addMessage(`→ ${to}: ${text}`);
  $("message").value = "";
});

// ---- own status ----------------------------------------------------------------------------------

function statusProblem(status) {
  if ([...status].length > MAX_STATUS_CHARACTERS) return `a status is at most ${MAX_STATUS_CHARACTERS} characters`;
  if (/\p{Cc}/u.test(status)) return "a status must not hold control characters";
  return null;
}

function sendStatus(status) {
  if (!connection) return;
  $("status-error").textContent = "";
  connection.send("setStatus", status).catch((error) => ($("status-error").textContent = error.message));
}

$("status-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const status = $("my-status").value.normalize("NFC").trim();
  const problem = statusProblem(status);
  if (problem) {
    $("status-error").textContent = problem;
    return;
  }
  sendStatus(status || null);
});

$("clear-status").addEventListener("click", () => {
  $("my-status").value = "";
  sendStatus(null);
});

// ---- joining and leaving by name -----------------------------------------------------------------

function roomByName(method) {
  const room = $("room-name").value; // not trimmed: the page applies the app's rule as it is
  const problem = roomProblem(room);
  if (problem) {
    showRoomError(problem);
    return;
  }
  if (method === "join" && !rooms.has(room) && rooms.size >= MAX_ROOMS) {
    showRoomError(`a user may be in at most ${MAX_ROOMS} rooms`);
    return;
  }
  showRoomError("");
  roomCall(method, room);
}

$("room-form").addEventListener("submit", (event) => {
  event.preventDefault();
  roomByName("join");
});

$("leave").addEventListener("click", () => roomByName("leave"));

// ---- refreshing ----------------------------------------------------------------------------------

$("inspector").addEventListener("toggle", () => {
  if ($("inspector").open) {
    renderInspector();
    refreshAll();
  }
});

setInterval(() => {
  if (inspectorOpen()) refreshAll();
}, INSPECT_EVERY_MS);

setInterval(render, CLOCK_EVERY_MS);

refreshUsers();
