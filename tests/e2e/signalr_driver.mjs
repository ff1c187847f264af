// Drives real @microsoft/signalr Node clients for the end-to-end tests.
// Commands arrive as JSON lines on stdin; events leave as JSON lines on stdout.
//   {"req": 1, "op": "connect", "id": "a1", "url": "http://127.0.0.1:7071/api", "user": "alice", "targets": ["newMessage"]}
//     ("ignore": ["presence"]: targets received without an event each, e.g. for many tabs)
//   {"req": 1, "op": "connect", "id": "a1", "url": "https://<app>/api", "accessToken": "<Entra token>"}
//     (a bearer token for negotiate, as App Service Authentication expects; never echoed back)
//   {"req": 2, "op": "send", "id": "a1", "method": "send", "args": ["bob", "hi"]}
//   {"req": 3, "op": "invoke", "id": "a1", "method": "send", "args": ["bob", "hi"]}
//   {"req": 4, "op": "stop", "id": "a1"}
//   {"req": 5, "op": "exit"}
import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(import.meta.url);
const signalR = require("@microsoft/signalr");

const connections = new Map();

function emit(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

async function connect(command) {
  const headers = command.user ? { "x-ms-client-principal-name": command.user } : {};
  if (command.userAgent) headers["User-Agent"] = command.userAgent;
  const options = { headers, transport: signalR.HttpTransportType.WebSockets };
  if (command.accessToken) options.accessTokenFactory = () => command.accessToken;
  const connection = new signalR.HubConnectionBuilder()
    .withUrl(command.url, options)
    .withServerTimeout(command.serverTimeoutMs ?? 30000)
    .withKeepAliveInterval(command.keepAliveMs ?? 15000)
    .configureLogging(signalR.LogLevel.Warning)
    .build();
  for (const target of command.targets ?? ["newMessage", "presence", "error"]) {
    connection.on(target, (...args) => emit({ id: command.id, event: "message", target, args }));
  }
  for (const target of command.ignore ?? []) {
    connection.on(target, () => {}); // received but not reported (and not warned about as unhandled)
  }
  connection.onclose((error) => emit({ id: command.id, event: "closed", error: error ? String(error) : null }));
  connections.set(command.id, connection);
  await connection.start();
  return { connectionId: connection.connectionId };
}

async function handle(command) {
  const connection = connections.get(command.id);
  switch (command.op) {
    case "connect":
      return connect(command);
    case "send":
      await connection.send(command.method, ...(command.args ?? []));
      return {};
    case "invoke":
      return { result: (await connection.invoke(command.method, ...(command.args ?? []))) ?? null };
    case "stop":
      await connection.stop();
      return {};
    case "exit":
      await Promise.allSettled([...connections.values()].map((c) => c.stop()));
      setImmediate(() => process.exit(0));
      return {};
    default:
      throw new Error(`unknown op ${command.op}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  let command;
  try {
    command = JSON.parse(line);
  } catch (error) {
    emit({ event: "bad-command", error: String(error) });
    return;
  }
  handle(command).then(
    (result) => emit({ req: command.req, id: command.id, event: "ok", ...result }),
    (error) => emit({ req: command.req, id: command.id, event: "failed", error: String(error) }),
  );
});
lines.on("close", async () => {
  await Promise.allSettled([...connections.values()].map((c) => c.stop()));
  process.exit(0);
});
