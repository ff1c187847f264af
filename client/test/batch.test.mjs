// A big room's batched presence (`presenceBatch`) and rooms' occupancy (`occupancy`, watchOccupancy,
// unwatchOccupancy) on a connection double that delivers what a test hands it (no server: it sends neither yet).
import assert from "node:assert/strict";
import { test } from "node:test";

import { trackPresence } from "../presence.js";

/** The part of a HubConnection the tracker uses: delivers what a test hands it, and reconnects when told. */
class LoopbackConnection {
  state = "Connected";
  sent = [];
  #handlers = new Map();
  #reconnected = [];
  on(target, handler) {
    this.#handlers.set(target, [...(this.#handlers.get(target) ?? []), handler]);
  }
  off(target, handler) {
    this.#handlers.set(target, (this.#handlers.get(target) ?? []).filter((h) => h !== handler));
  }
  onreconnected(callback) {
    this.#reconnected.push(callback);
  }
  send(method, ...args) {
    this.sent.push([method, ...args]);
    return Promise.resolve();
  }
  deliver(target, argument) {
    for (const handler of this.#handlers.get(target) ?? []) handler(argument);
  }
  /** What @microsoft/signalr does after an automatic reconnect: a new connection id, then the callbacks. */
  reconnect() {
    for (const callback of this.#reconnected) callback("a-new-connection-id");
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

/** A tracker on a fresh loopback, with every event it emits recorded in order as [event, ...arguments]. */
function tracked() {
  const connection = new LoopbackConnection();
  const presence = trackPresence(connection);
  const events = [];
  for (const event of ["change", "sync", "members", "occupancy", "error"]) {
    presence.on(event, (...args) => events.push([event, ...args]));
  }
  return { connection, presence, events };
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 20));

test("a batch gives the same change events, with the same arguments, as its entries sent one by one", async () => {
  const entries = [
    state("ada", 5),
    state("Bob", 3, true, { status: "busy" }),
    state("ADA", 4, false), // older than ada's 5 in the same batch: dropped
    state("bob", 9, false), // newer than Bob's 3: a change with Bob's state as previous
    state("ada", 5), // a repeat
    { user: "no version" }, // not an entry: skipped as a single message would be
  ];
  const single = tracked();
  const batched = tracked();
  for (const one of [single, batched]) {
    await one.presence.join("big");
    one.connection.deliver("presence", state("ada", 2)); // known before: the first change is ada's second
  }
  for (const entry of entries) single.connection.deliver("presence", { ...entry, room: "big" });
  batched.connection.deliver("presenceBatch", { room: "big", users: entries });
  assert.deepEqual(
    single.events.map(([event, user, current, previous]) => [event, user, current.version, previous?.version]),
    [
      ["change", "ada", 2, undefined],
      ["change", "ada", 5, 2],
      ["change", "Bob", 3, undefined],
      ["change", "bob", 9, 3],
    ],
  );
  assert.deepEqual(batched.events, single.events, "the same events, same arguments, nothing for the batch itself");
  assert.deepEqual(batched.presence.of("BOB"), single.presence.of("BOB"));
  assert.equal(Object.hasOwn(batched.presence.of("ada"), "room"), false, "a state carries no room");
  batched.connection.deliver("presenceBatch", { room: "big" }); // no users: ignored
  batched.connection.deliver("presenceBatch", null);
  await settle();
  assert.equal(batched.events.length, 4);
});

test("a batch entry older than a single change already heard is dropped, and a single change older than an entry", () => {
  const { connection, presence, events } = tracked();
  connection.deliver("presence", state("ada", 20, true, { room: "big", status: "here" }));
  connection.deliver("presenceBatch", { room: "big", users: [state("ada", 10, false), state("bob", 30, false)] });
  connection.deliver("presence", state("bob", 25, true, { room: "big" }));
  connection.deliver("presence", state("bob", 30, true, { room: "big" })); // the same version as the entry: a repeat
  assert.deepEqual(
    events.map(([, user, current]) => [user, current.version]),
    [
      ["ada", 20],
      ["bob", 30],
    ],
  );
  assert.deepEqual([presence.of("ada").online, presence.of("ada").status], [true, "here"]);
  assert.equal(presence.of("bob").online, false);
  connection.deliver("presenceBatch", { room: "big", users: [state("ada", 21, false)] });
  assert.deepEqual([presence.of("ada").version, presence.of("ada").online], [21, false], "a newer entry wins");
});

test("a snapshot after a batch merges by version, entry by entry", async () => {
  const { connection, presence, events } = tracked();
  await presence.join("big");
  connection.deliver("presenceBatch", { room: "big", users: [state("ada", 5), state("bob", 7)] });
  connection.deliver("presenceSync", {
    room: "big",
    users: [state("ada", 6, false), state("bob", 3, false), state("cy", 1)],
    page: 1,
    pages: 1,
  });
  assert.deepEqual(
    events.map(([event, first, second]) => [event, first, second?.version]),
    [
      ["change", "ada", 5],
      ["change", "bob", 7],
      ["change", "ada", 6],
      ["change", "cy", 1],
      ["sync", "big", undefined],
    ],
  );
  assert.deepEqual(
    presence.members("big").map((member) => [member.user, member.version, member.online]),
    [
      ["ada", 6, false],
      ["bob", 7, true],
      ["cy", 1, true],
    ],
  );
  connection.deliver("presenceBatch", { room: "big", users: [state("cy", 1, false), state("cy", 2, false)] });
  assert.deepEqual([presence.of("cy").version, presence.of("cy").online], [2, false], "and a batch after a snapshot");
});

test("a batch for a room not joined merges as a single presence message of that room does (by version)", () => {
  const single = tracked();
  const batched = tracked();
  single.connection.deliver("presence", state("ada", 4, true, { room: "elsewhere" }));
  batched.connection.deliver("presenceBatch", { room: "elsewhere", users: [state("ada", 4)] });
  assert.equal(single.events.length, 1, "today's rule: a presence message merges whatever its room");
  assert.deepEqual(batched.events, single.events);
  assert.deepEqual(batched.presence.members("elsewhere"), [], "and it makes nobody a member");
  assert.deepEqual(batched.presence.rooms(), []);
});

test("an occupancy event comes only for a higher version of a watched room; unwatching forgets it", async () => {
  const { connection, presence, events } = tracked();
  await presence.watchOccupancy("hall");
  const occupancy = (version, online, room = "hall") => ({ room, members: 500, online, version });
  connection.deliver("occupancy", occupancy(3, 120));
  connection.deliver("occupancy", occupancy(2, 90)); // older
  connection.deliver("occupancy", occupancy(3, 121)); // the same version
  connection.deliver("occupancy", occupancy(4, 130));
  connection.deliver("occupancy", occupancy(9, 1, "other")); // a room not watched
  connection.deliver("occupancy", { room: "hall", members: "500", online: 1, version: 10 }); // not integers
  connection.deliver("occupancy", null);
  assert.deepEqual(events, [
    ["occupancy", { room: "hall", members: 500, online: 120, version: 3 }],
    ["occupancy", { room: "hall", members: 500, online: 130, version: 4 }],
  ]);
  assert.deepEqual(presence.occupancy("hall"), { room: "hall", members: 500, online: 130, version: 4 });
  assert.equal(presence.occupancy("other"), undefined);
  assert.throws(() => presence.occupancy("no rooms here"), RangeError);
  await presence.unwatchOccupancy("hall");
  assert.equal(presence.occupancy("hall"), undefined, "forgotten");
  connection.deliver("occupancy", occupancy(5, 140)); // late, after the unwatch
  assert.equal(presence.occupancy("hall"), undefined);
  assert.equal(events.length, 2);
  await presence.watchOccupancy("hall");
  connection.deliver("occupancy", occupancy(6, 150));
  assert.deepEqual(presence.occupancy("hall"), { room: "hall", members: 500, online: 150, version: 6 });
  assert.equal(events.length, 3);
});

test("watchOccupancy and unwatchOccupancy send their hub calls with the room, after checking it", async () => {
  const { connection, presence } = tracked();
  await presence.watchOccupancy("hall");
  await presence.watchOccupancy("hall.2");
  await presence.unwatchOccupancy("hall");
  assert.deepEqual(connection.sent, [
    ["watchOccupancy", "hall"],
    ["watchOccupancy", "hall.2"],
    ["unwatchOccupancy", "hall"],
  ]);
  assert.throws(() => presence.watchOccupancy("no spaces"), RangeError);
  assert.throws(() => presence.unwatchOccupancy(["hall"]), TypeError);
  connection.state = "Disconnected";
  assert.throws(() => presence.watchOccupancy("hall"), /await connection.start/);
  assert.equal(connection.sent.length, 3, "nothing sent for a refused call");
});

test("a reconnect sends watchOccupancy again for every room still watched, with the joins and watches", async () => {
  const { connection, presence } = tracked();
  await presence.join("lobby");
  await presence.watch(["ada"]);
  await presence.watchOccupancy("hall");
  await presence.watchOccupancy("gone");
  await presence.watchOccupancy("big");
  await presence.unwatchOccupancy("gone");
  connection.deliver("occupancy", { room: "hall", members: 3, online: 2, version: 8 });
  connection.sent.length = 0;
  connection.reconnect();
  await settle();
  assert.deepEqual(connection.sent, [
    ["join", "lobby"],
    ["watch", ["ada"]],
    ["watchOccupancy", "hall"],
    ["watchOccupancy", "big"],
  ]);
  assert.equal(presence.occupancy("hall").online, 2, "kept meanwhile, as states are");
  connection.sent.length = 0;
  await presence.resync();
  assert.deepEqual(
    connection.sent.filter(([method]) => method === "watchOccupancy"),
    [
      ["watchOccupancy", "hall"],
      ["watchOccupancy", "big"],
    ],
    "resync() sends them too",
  );
});

test("a watchOccupancy answered retry is sent again while still wanted, not after unwatchOccupancy", async () => {
  const connection = new LoopbackConnection();
  const presence = trackPresence(connection, { retryDelayMs: 1, maxRetryDelayMs: 1 });
  const errors = [];
  presence.on("error", (error) => errors.push(error));
  await presence.watchOccupancy("kept");
  await presence.watchOccupancy("dropped");
  await presence.unwatchOccupancy("dropped");
  connection.sent.length = 0;
  const retry = (room) => ({ error: "unavailable", retry: true, call: "watchOccupancy", arguments: [room] });
  connection.deliver("error", retry("kept"));
  connection.deliver("error", retry("dropped"));
  await settle();
  assert.deepEqual(connection.sent, [["watchOccupancy", "kept"]]);
  assert.deepEqual(
    errors.map((error) => error.arguments[0]),
    ["dropped"],
  );
});
