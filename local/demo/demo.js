// Demo client: negotiate through the app, connect with @microsoft/signalr, and follow presence with the project's
// client library (client/presence.js). Nothing is read over HTTP but negotiate, so the page works the same against
// a deployment, where the other routes need a function key that a browser must never hold.
import { checkRoom, checkStatus, checkUsers, foldUserName, trackPresence } from "/client/presence.js";

const $ = (id) => document.getElementById(id);
const CLOCK_EVERY_MS = 5000; // relative times ("2 minutes ago") are redrawn this often
const RETRIES = Number(new URLSearchParams(location.search).get("retries") ?? 5);

let connection = null;
let presence = null;
let me = null; // { user, key } while connected
const rooms = new Map(); // joined room -> { element, list, messages }
const seenOffline = new Set(); // users seen online, then offline, while the page was open

// Rooms a user's tabs joined, remembered in this browser so a new tab joins them again (the page asks the app for
// nothing over HTTP, and a join is safe to repeat).
const remembered = {
  key: () => `demo.rooms.${me.key}`,
  all: () => JSON.parse(localStorage.getItem(remembered.key()) ?? "[]"),
  set: (list) => localStorage.setItem(remembered.key(), JSON.stringify([...new Set(list)])),
  add: (room) => remembered.set([...remembered.all(), room]),
  remove: (room) => remembered.set(remembered.all().filter((r) => r !== room)),
};

function element(tag, { text, className, data } = {}, ...children) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  for (const [name, value] of Object.entries(data ?? {})) node.dataset[name] = String(value);
  node.append(...children);
  return node;
}

function ago(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.round(seconds / 60);
  return minutes < 60 ? `${minutes} minute${minutes === 1 ? "" : "s"} ago` : new Date(iso).toLocaleString();
}

function describe(state) {
  const parts = [element("span", { className: "name", text: state.user })];
  if (me && foldUserName(state.user) === me.key) parts.push(element("span", { className: "you", text: " (you)" }));
  if (state.online) {
    const tabs = state.connections === 1 ? "1 connection" : `${state.connections} connections`;
    parts.push(element("span", { className: "count", text: ` · ${tabs}` }));
    if (state.status) parts.push(element("span", { className: "user-status", text: state.status }));
  } else if (state.lastSeen) {
    parts.push(element("span", { className: "last-seen", text: ` · last seen ${ago(state.lastSeen)}` }));
  }
  return parts;
}

function personItem(state) {
  return element(
    "li",
    { data: { user: state.user, online: state.online, connections: state.connections } },
    ...describe(state),
  );
}

// Everyone the page hears about: its rooms' members, the users it watches and its own user.
function renderPeople() {
  const known = new Map();
  for (const room of rooms.keys()) for (const state of presence.members(room)) known.set(foldUserName(state.user), state);
  for (const user of presence.watched()) {
    const state = presence.of(user);
    if (state) known.set(foldUserName(user), state);
  }
  const mine = me && presence.of(me.user);
  if (mine) known.set(me.key, mine);
  const sorted = [...known.values()].sort((a, b) => a.user.localeCompare(b.user));
  $("users").replaceChildren(...sorted.filter((state) => state.online).map(personItem));
  $("offline").replaceChildren(
    ...sorted.filter((state) => !state.online && seenOffline.has(foldUserName(state.user))).map(personItem),
  );
  for (const [room, panel] of rooms) {
    panel.list.replaceChildren(...presence.members(room).map(personItem));
  }
}

function note(text, className = "") {
  $("messages").prepend(element("li", { text, className }));
}

function showError(error) {
  const target = ["join", "leave", "sync", "sendToRoom"].includes(error.call) ? "room-error" : "";
  let text = error.call ? `${error.call}: ${error.error}` : error.error;
  if (error.refused === true && error.call === "join") {
    // A private room not granted to this user: forget it here (a server's grant opens it by itself).
    remembered.remove(error.room);
    $("room-note").textContent = "";
    text = `join ${error.room}: ${error.error} (private: a server must grant it to you first)`;
  }
  const detail = error.retry ? `${text} (gave up after ${RETRIES} retries)` : text;
  if (target) $(target).textContent = detail;
  else if (["watch", "unwatch"].includes(error.call)) $("watch-error").textContent = detail;
  else if (error.call === "setStatus") $("status-error").textContent = detail;
  else note(detail, "error");
}

function openRoom(room) {
  if (rooms.has(room)) return;
  const list = element("ul", { className: "members" });
  const messages = element("ul", { className: "room-messages" });
  const input = element("input", { className: "room-message" });
  input.placeholder = "message to the room";
  const send = element("button", { className: "send-room", text: "Send" });
  const leave = element("button", { className: "leave-room", text: "Leave" });
  send.type = "submit";
  leave.type = "button";
  const form = element("form", {}, input, send, leave);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!input.value) return;
    connection.send("sendToRoom", room, input.value).catch((error) => showError({ error: String(error) }));
    input.value = "";
  });
  leave.addEventListener("click", () => leaveRoom(room));
  const section = element(
    "section",
    { className: "room", data: { room } },
    element("h3", { text: room }),
    element("h4", { text: "Members" }),
    list,
    form,
    element("h4", { text: "Messages" }),
    messages,
  );
  rooms.set(room, { element: section, list, messages });
  $("rooms").append(section);
  renderPeople();
}

function closeRoom(room) {
  rooms.get(room)?.element.remove();
  rooms.delete(room);
  renderPeople();
}

async function joinRoom(room) {
  $("room-error").textContent = "";
  remembered.add(room);
  $("room-note").textContent = `joining ${room}…`;
  await presence.join(room); // the panel opens with the room's snapshot (the tracker's "sync")
}

async function leaveRoom(room) {
  remembered.remove(room);
  closeRoom(room);
  if (presence.rooms().includes(room)) await presence.leave(room);
}

function wire() {
  presence = trackPresence(connection, { retries: RETRIES, retryDelayMs: 300 });
  presence.on("change", (user, state, previous) => {
    if (!state.online && previous?.online) seenOffline.add(foldUserName(user));
    if (state.online) seenOffline.delete(foldUserName(user));
    renderPeople();
  });
  presence.on("sync", (room) => {
    if (room !== null && presence.rooms().includes(room)) {
      openRoom(room);
      $("room-note").textContent = "";
    }
    renderPeople();
  });
  presence.on("members", () => renderPeople());
  presence.on("error", showError);
  connection.on("newMessage", (message) => {
    if (message.room) rooms.get(message.room)?.messages.prepend(element("li", { text: `${message.from}: ${message.message}` }));
    else note(`${message.from}: ${message.message}`);
  });
  connection.on("room", (change) => {
    // This user joined (in another tab, or a server granted the room) or left (another tab, or a server revoked
    // the room): follow it here. A granted room's snapshot follows, which opens its panel.
    if (foldUserName(change.user) !== me.key) return;
    if (change.joined) {
      remembered.add(change.room);
      if ($("room-error").textContent.includes(` ${change.room}:`)) $("room-error").textContent = ""; // refused before
    }
    if (change.joined && !presence.rooms().includes(change.room)) joinRoom(change.room);
    if (!change.joined && rooms.has(change.room)) leaveRoom(change.room);
  });
  connection.onclose(() => setState("disconnected"));
  connection.onreconnecting(() => setState("reconnecting"));
  connection.onreconnected(() => setState("connected"));
}

function setState(state) {
  $("status").dataset.state = state;
  $("status").textContent = state;
  const connected = state === "connected";
  for (const id of ["disconnect", "my-status", "set-status", "clear-status", "room-name", "join", "send"]) {
    $(id).disabled = !connected;
  }
  for (const id of ["watch-names", "watch", "unwatch"]) $(id).disabled = !connected;
  for (const button of document.querySelectorAll(".quick-join")) button.disabled = !connected;
  $("connect").disabled = connected || state === "connecting";
  $("name").disabled = connected || state === "connecting";
}

async function connect(event) {
  event.preventDefault();
  const user = $("name").value.trim();
  if (!user) return;
  me = { user, key: foldUserName(user) };
  setState("connecting");
  connection = new signalR.HubConnectionBuilder()
    .withUrl("/api", { headers: { "x-ms-client-principal-name": user } }) // App Service Authentication's, in Azure
    .withAutomaticReconnect()
    .configureLogging(signalR.LogLevel.Warning)
    .build();
  window.connection = connection; // for the console (and the browser test)
  wire();
  try {
    await connection.start();
  } catch (error) {
    setState("error");
    $("status").textContent = `could not connect: ${error}`;
    return;
  }
  setState("connected");
  const grant = `${location.origin}/api/rooms/staff/members/${encodeURIComponent(user).replaceAll("'", "%27")}`;
  $("grant-example").textContent = `curl -X PUT '${grant}'`; // what a server runs to let this user into staff
  await presence.watch([user]).catch(showError); // this user's own state, from a snapshot
  for (const room of remembered.all()) await joinRoom(room).catch((error) => showError({ error: String(error) }));
}

async function disconnect() {
  presence?.dispose();
  await connection?.stop();
  for (const room of [...rooms.keys()]) closeRoom(room);
  setState("disconnected");
}

function guarded(check, errorId, action) {
  return (event) => {
    event?.preventDefault();
    $(errorId).textContent = "";
    let value;
    try {
      value = check();
    } catch (error) {
      $(errorId).textContent = error.message; // the library checks input as the server would, and sends nothing
      return;
    }
    action(value).catch((error) => ($(errorId).textContent = String(error)));
  };
}

$("login").addEventListener("submit", connect);
$("disconnect").addEventListener("click", disconnect);
$("status-form").addEventListener(
  "submit",
  guarded(() => checkStatus($("my-status").value), "status-error", (status) => presence.setStatus(status)),
);
$("clear-status").addEventListener(
  "click",
  guarded(() => null, "status-error", () => presence.setStatus(null)),
);
$("room-form").addEventListener(
  "submit",
  guarded(
    () => {
      try {
        return checkRoom($("room-name").value);
      } catch {
        throw new Error(`"${$("room-name").value}" is not a room name: 1-64 letters, digits, '-', '_' or '.'`);
      }
    },
    "room-error",
    joinRoom,
  ),
);
for (const button of document.querySelectorAll(".quick-join")) {
  button.addEventListener("click", () => {
    $("room-error").textContent = "";
    joinRoom(button.dataset.room).catch((error) => ($("room-error").textContent = String(error)));
  });
}
const watchList = () => checkUsers($("watch-names").value.split(",").map((name) => name.trim()).filter(Boolean));
$("watch-form").addEventListener(
  "submit",
  guarded(watchList, "watch-error", (users) => presence.watch(users)),
);
$("unwatch").addEventListener(
  "click",
  guarded(watchList, "watch-error", (users) => presence.unwatch(users).then(renderPeople)),
);
$("compose").addEventListener("submit", (event) => {
  event.preventDefault();
  connection.send("send", $("to").value, $("message").value).catch((error) => note(String(error), "error"));
  note(`you → ${$("to").value}: ${$("message").value}`, "sent");
  $("message").value = "";
});
setInterval(() => presence && renderPeople(), CLOCK_EVERY_MS);
setState("disconnected");
