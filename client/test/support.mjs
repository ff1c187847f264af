// The local stack for the client's tests: Azurite, the SignalR emulator and the local host, started by the tests.
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
export const signalR = require("@microsoft/signalr");

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const PYTHON = process.env.PYTHON ?? path.join(ROOT, ".venv", "bin", "python");

/** Start the stack with `settings` (app settings); resolve to where it listens and how to stop it. */
export async function startStack(settings = {}, { gate = false } = {}) {
  const proxy = gate ? await startGate() : null;
  const args = ["-m", "testkit.serve_stack"];
  // Rooms open to all, anyone watched and no call budget, unlike the app's defaults: the tests written before access
  // and budgets were decided.
  const all = { ROOMS_OPEN: "*", PRESENCE_WATCH: "anyone", CLIENT_CALL_RATE: "0", ...settings };
  for (const [name, value] of Object.entries(all)) args.push("--setting", `${name}=${value}`);
  if (proxy) args.push("--app-table-port", String(proxy.port));
  const child = spawn(PYTHON, args, { cwd: ROOT, stdio: ["pipe", "pipe", "inherit"] });
  const ready = await new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout });
    lines.once("line", (line) => resolve(JSON.parse(line)));
    child.once("exit", (code) => reject(new Error(`the stack exited (${code}) before it was ready`)));
  });
  if (proxy) proxy.target = ready.tablePort;
  return {
    ...ready,
    gate: proxy,
    async stop() {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.stdin.end();
      await exited;
      proxy?.close();
    },
  };
}

/** A TCP proxy in front of Azurite's table service that a test can shut (every connection cut) and open again. */
async function startGate() {
  const sockets = new Set();
  const gate = { port: 0, target: 0, open: true, close: () => server.close() };
  const server = net.createServer((client) => {
    if (!gate.open) {
      client.destroy();
      return;
    }
    const upstream = net.connect(gate.target, "127.0.0.1");
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {});
    }
    client.pipe(upstream).pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  gate.shut = () => {
    gate.open = false;
    for (const socket of sockets) socket.destroy();
  };
  gate.reopen = () => {
    gate.open = true;
  };
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  gate.port = server.address().port;
  return gate;
}

/** Build (not start) a connection for `user`, as App Service Authentication would present them to negotiate. */
export function connectionFor(stack, user, { reconnect = false } = {}) {
  const builder = new signalR.HubConnectionBuilder()
    .withUrl(stack.api, {
      headers: { "x-ms-client-principal-name": user },
      transport: signalR.HttpTransportType.WebSockets,
    })
    .configureLogging(signalR.LogLevel.None);
  if (reconnect) builder.withAutomaticReconnect([0, 200, 500, 1000, 2000]);
  return builder.build();
}

/** Start a connection for `user`, and wait until the app answered its connected event (in Azure, and in the
 * emulator by default, `start()` ends when the handshake is answered, before the app's connected function ran). */
export async function connected(stack, user, options) {
  const connection = connectionFor(stack, user, options);
  await connection.start();
  await connectedAnswered(stack, connection.connectionId);
  return connection;
}

/** Wait until the emulator has the app's answer to a connection's connected event (or the connection is gone). */
export async function connectedAnswered(stack, connectionId) {
  const url = `${stack.emulator}/admin/connections/${encodeURIComponent(connectionId)}`;
  await until(async () => {
    const answer = await fetch(url);
    return answer.status === 404 || (await answer.json()).connectedStatus !== null;
  }, `the app's answer to ${connectionId}'s connected event`);
}

/** Resolve once `check()` is truthy (polled), or reject with `what` after `within` ms. */
export async function until(check, what, within = 20000) {
  const deadline = Date.now() + within;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Resolve with the arguments of the next `event` of `tracker` that `accept` takes. */
export function next(tracker, event, accept = () => true, within = 20000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${event} within ${within} ms`));
    }, within);
    const off = tracker.on(event, (...args) => {
      if (!accept(...args)) return;
      clearTimeout(timer);
      off();
      resolve(args);
    });
  });
}

/** Return the emulator's billed-message counts. */
export async function billed(stack) {
  return (await fetch(`${stack.emulator}/admin/messages`)).json();
}

/** Return a user name no other test uses. */
export function uniqueUser(prefix) {
  return `${prefix}-${Math.random().toString(36).slice(2, 10)}`;
}

/** Cut a connection as a network failure would (the emulator's admin API). */
export async function drop(stack, connectionId) {
  const answer = await fetch(`${stack.emulator}/admin/connections/${encodeURIComponent(connectionId)}/drop`, {
    method: "POST",
  });
  if (!answer.ok) throw new Error(`drop answered ${answer.status}`);
}

/** Read a user's presence from the HTTP route a server would use (the local host does not check keys here). */
export async function presenceOf(stack, user) {
  return (await fetch(`${stack.api}/users/${encodeURIComponent(user)}`)).json();
}

/** A room's occupancy as `GET /api/rooms/{room}/occupancy` answers it: `{room, members, online, version}`. */
export async function occupancyOf(stack, room) {
  return (await fetch(`${stack.api}/rooms/${encodeURIComponent(room)}/occupancy`)).json();
}
