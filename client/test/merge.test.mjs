// The tracker's merge rules on a connection double that delivers messages in any order (no server needed):
// older versions after newer ones, pages out of order, joins and leaves while a snapshot is arriving.
import assert from "node:assert/strict";
import { test } from "node:test";

import { trackPresence } from "../presence.js";

/** The part of a HubConnection the tracker uses, delivering what a test hands it. */
class LoopbackConnection {
  state = "Connected";
  sent = [];
  #handlers = new Map();
  on(target, handler) {
    this.#handlers.set(target, [...(this.#handlers.get(target) ?? []), handler]);
  }
  off(target, handler) {
    this.#handlers.set(target, (this.#handlers.get(target) ?? []).filter((h) => h !== handler));
  }
  onreconnected() {}
  send(method, ...args) {
    this.sent.push([method, ...args]);
    return Promise.resolve();
  }
  deliver(target, argument) {
    for (const handler of this.#handlers.get(target) ?? []) handler(argument);
  }
}

const state = (user, version, online = true, extra = {}) => ({
  user,
  online,
  connections: online ? 1 : 0,
  status: null,
  lastSeen: online ? null : "2026-12-03T10:00:00Z",
  version,
  ...extra,
});

test("an older version arriving after a newer one changes nothing", () => {
  const connection = new LoopbackConnection();
  const presence = trackPresence(connection);
  const changes = [];
  presence.on("change", (user, s) => changes.push(s.version));
  connection.deliver("presence", state("Ada", 20, false));
  connection.deliver("presence", state("ada", 10, true)); // older, another case of the name
  connection.deliver("presence", state("ADA", 20, false)); // a repeat
  assert.deepEqual(changes, [20]);
  assert.equal(presence.of("Ada").online, false);
});

test("a snapshot's pages in any order make one member list, with the joins and leaves heard meanwhile", async () => {
  const connection = new LoopbackConnection();
  const presence = trackPresence(connection);
  await presence.join("lobby");
  const synced = [];
  presence.on("sync", (room) => synced.push(room));
  connection.deliver("presenceSync", { room: "lobby", users: [state("c", 3)], page: 2, pages: 2 });
  connection.deliver("room", { room: "lobby", user: "d", joined: true });
  connection.deliver("room", { room: "lobby", user: "a", joined: false });
  assert.deepEqual(synced, [], "not complete yet");
  connection.deliver("presenceSync", { room: "lobby", users: [state("a", 1), state("b", 2)], page: 1, pages: 2 });
  assert.deepEqual(synced, ["lobby"]);
  assert.deepEqual(presence.members("lobby").map((s) => s.user).sort(), ["b", "c", "d"]);
  assert.equal(presence.members("lobby").find((s) => s.user === "d").version, 0, "heard of, no state yet");
  assert.equal(presence.of("a").version, 1, "a left the room, its state is still known");
});

test("a snapshot entry older than a change already heard does not roll it back", async () => {
  const connection = new LoopbackConnection();
  const presence = trackPresence(connection);
  await presence.watch(["bo"]);
  connection.deliver("presence", state("bo", 50, true, { status: "busy" }));
  connection.deliver("presenceSync", { room: null, users: [state("bo", 40, false)], page: 1, pages: 1 });
  assert.deepEqual([presence.of("bo").version, presence.of("bo").status], [50, "busy"]);
});

test("a retry is dropped when a later call superseded it, and sent again otherwise", async () => {
  const connection = new LoopbackConnection();
  const presence = trackPresence(connection, { retryDelayMs: 1, maxRetryDelayMs: 1 });
  const errors = [];
  presence.on("error", (error) => errors.push(error));
  await presence.setStatus("one");
  await presence.setStatus("two");
  await presence.join("kept");
  connection.sent.length = 0;
  const retry = (call, argument) => ({ error: "unavailable", retry: true, call, arguments: [argument] });
  connection.deliver("error", retry("setStatus", "one")); // superseded by "two"
  connection.deliver("error", retry("join", "kept"));
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(connection.sent, [["join", "kept"]]);
  assert.deepEqual(
    errors.map((e) => e.call),
    ["setStatus"],
    "the superseded call's error is surfaced, not retried",
  );
});

test("after the retries, the error reaches on('error'); dispose stops listening", async () => {
  const connection = new LoopbackConnection();
  const presence = trackPresence(connection, { retries: 2, retryDelayMs: 1, maxRetryDelayMs: 1 });
  const errors = [];
  presence.on("error", (error) => errors.push(error));
  await presence.join("down");
  const failure = { error: "unavailable", retry: true, call: "join", arguments: ["down"] };
  for (let attempt = 0; attempt < 3; attempt += 1) {
    connection.deliver("error", failure);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.equal(connection.sent.filter(([method]) => method === "join").length, 3, "the call and two retries");
  assert.deepEqual(errors, [failure]);
  presence.dispose();
  connection.deliver("presence", state("late", 1));
  assert.equal(presence.of("late"), undefined);
  assert.throws(() => presence.join("again"), /disposed/);
});
