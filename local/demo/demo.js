// Demo client: negotiate through the app, connect with @microsoft/signalr, show presence and messages.
"use strict";

const $ = (id) => document.getElementById(id);
let connection = null;

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text ?? state;
  const connected = state === "connected";
  $("connect").disabled = connected;
  $("disconnect").disabled = !connected;
  $("send").disabled = !connected;
  $("name").disabled = connected;
}

function addMessage(text, { from = null, error = false } = {}) {
  const item = document.createElement("li");
  if (error) item.className = "error";
  if (from !== null) {
    const who = document.createElement("span");
    who.className = "from";
    who.textContent = `${from}: `;
    item.append(who);
  }
  item.append(document.createTextNode(text));
  $("messages").prepend(item);
}

async function refreshUsers() {
  // GET /api/users needs a function key in Azure; the local host, like Core Tools, does not check keys.
  const response = await fetch("/api/users?limit=1000");
  if (!response.ok) return;
  const { users } = await response.json();
  $("users").replaceChildren(
    ...users.map(({ user, connections }) => {
      const item = document.createElement("li");
      item.dataset.user = user;
      item.textContent = connections > 1 ? `${user} (${connections} connections)` : user;
      return item;
    }),
  );
}

async function connect(name) {
  connection = new signalR.HubConnectionBuilder()
    .withUrl("/api", { headers: { "x-ms-client-principal-name": name } })
    .configureLogging(signalR.LogLevel.Warning)
    .build();
  connection.on("newMessage", ({ from, message }) =>
    addMessage(typeof message === "string" ? message : JSON.stringify(message), { from: from ?? "(server)" }),
  );
  connection.on("presence", () => refreshUsers());
  connection.on("error", ({ error, to }) => addMessage(to ? `${error} (${to})` : error, { error: true }));
  connection.onclose((error) => {
    setStatus(error ? "error" : "disconnected", error ? `disconnected: ${error.message}` : "disconnected");
    refreshUsers();
  });
  setStatus("connecting");
  try {
    await connection.start();
  } catch (error) {
    setStatus("error", `could not connect: ${error.message}`);
    return;
  }
  setStatus("connected", `connected as ${name}`);
  await refreshUsers();
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

refreshUsers();
