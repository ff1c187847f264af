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

const V = 1_780_000_000_000; // versions are milliseconds: a batch's base is near them, its offsets small

const state = (user, version, online = true, extra = {}) => ({
  user,
  online,
  connections: online ? 1 : 0,
  status: null,
  lastSeen: online ? null : "2026-12-03T10:00:00Z",
  version,
  ...extra,
});

/** A `presenceBatch` of `room` as the server encodes it: the entries as tuples, their versions less `base`. */
function batchOf(room, entries, base = Math.min(...entries.map((entry) => entry.version))) {
  const users = entries.map(({ user, online, connections, status, version, lastSeen }) => [
    user,
    online ? 1 : 0,
    connections,
    status,
    version - base,
    lastSeen,
  ]);
  return { room, base, users };
}

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

test("a batch entry and a presence message of the same version give the same state and the same one change", () => {
  const single = tracked();
  const batched = tracked();
  const entry = state("Ada", V + 7, true, { connections: 3, status: "in a call" });
  single.connection.deliver("presence", { ...entry, room: "big" });
  batched.connection.deliver("presenceBatch", { room: "big", base: V, users: [["Ada", 1, 3, "in a call", 7, null]] });
  assert.deepEqual(single.events, [["change", "Ada", { ...entry }, undefined]]);
  assert.deepEqual(batched.events, single.events);
  assert.deepEqual(batched.presence.of("ada"), single.presence.of("ada"));
  assert.equal(batched.presence.of("ada").online, true, "1 decodes to true, not to 1");
  assert.equal(Object.hasOwn(batched.presence.of("ada"), "room"), false, "a state carries no room, as a message's");
  batched.connection.deliver("presenceBatch", batchOf("big", [entry]));
  single.connection.deliver("presence", { ...entry, room: "big" });
  assert.equal(batched.events.length, 1, "the same version again: a repeat, dropped by both");
  assert.equal(single.events.length, 1);
});

test("a batch gives the same change events, with the same arguments, as its entries sent one by one", async () => {
  const entries = [
    state("ada", V + 5),
    state("Bob", V + 3, true, { status: "busy" }),
    state("ADA", V + 4, false), // older than ada's 5 in the same batch: dropped
    state("bob", V + 9, false), // newer than Bob's 3: a change with Bob's state as previous
    state("ada", V + 5), // a repeat
  ];
  const single = tracked();
  const batched = tracked();
  for (const one of [single, batched]) {
    await one.presence.join("big");
    one.connection.deliver("presence", state("ada", V + 2)); // known before: the first change is ada's second
  }
  for (const entry of entries) single.connection.deliver("presence", { ...entry, room: "big" });
  batched.connection.deliver("presenceBatch", batchOf("big", entries));
  assert.deepEqual(
    single.events.map(([event, user, current, previous]) => [event, user, current.version - V, previous?.version - V]),
    [
      ["change", "ada", 2, NaN],
      ["change", "ada", 5, 2],
      ["change", "Bob", 3, NaN],
      ["change", "bob", 9, 3],
    ],
  );
  assert.deepEqual(batched.events, single.events, "the same events, same arguments, nothing for the batch itself");
  assert.deepEqual(batched.presence.of("BOB"), single.presence.of("BOB"));
  batched.connection.deliver("presenceBatch", { room: "big", base: V }); // no users: ignored
  batched.connection.deliver("presenceBatch", null);
  await settle();
  assert.equal(batched.events.length, 4);
});

test("a batch entry of a lower version than a single change already heard is dropped, and a single change too", () => {
  const { connection, presence, events } = tracked();
  connection.deliver("presence", state("ada", V + 20, true, { room: "big", status: "here" }));
  connection.deliver("presenceBatch", batchOf("big", [state("ada", V + 10, false), state("bob", V + 30, false)]));
  connection.deliver("presence", state("bob", V + 25, true, { room: "big" }));
  connection.deliver("presence", state("bob", V + 30, true, { room: "big" })); // the entry's version: a repeat
  assert.deepEqual(
    events.map(([, user, current]) => [user, current.version - V]),
    [
      ["ada", 20],
      ["bob", 30],
    ],
  );
  assert.deepEqual([presence.of("ada").online, presence.of("ada").status], [true, "here"]);
  assert.equal(presence.of("bob").online, false);
  connection.deliver("presenceBatch", batchOf("big", [state("ada", V + 20, false)])); // equal: dropped
  assert.deepEqual([presence.of("ada").version, presence.of("ada").online], [V + 20, true]);
  connection.deliver("presenceBatch", batchOf("big", [state("ada", V + 21, false)]));
  assert.deepEqual([presence.of("ada").version, presence.of("ada").online], [V + 21, false], "a newer entry wins");
  assert.equal(events.length, 3);
});

test("an offline entry keeps its lastSeen string exactly, and its status", () => {
  const { connection, presence, events } = tracked();
  const lastSeen = "2026-12-03T10:00:00.123456+00:00"; // not re-written as a Date would (…00.123Z)
  connection.deliver("presenceBatch", { room: "big", base: V, users: [["ada", 0, 0, "away", 0, lastSeen]] });
  assert.deepEqual(presence.of("ada"), {
    user: "ada",
    online: false,
    connections: 0,
    status: "away",
    lastSeen,
    version: V,
  });
  assert.equal(events.length, 1);
});

test("malformed tuples are skipped one by one, without throwing, and the good ones of the batch are kept", async () => {
  const { connection, presence, events } = tracked();
  const good = (user, offset) => [user, 1, 1, null, offset, null];
  const users = [
    good("ada", 1),
    ["bob", 1, 1, null, 2], // too short
    ["bob", 1, 1, null, 2, null, "extra"], // too long
    [42, 1, 1, null, 2, null], // the user not a string
    ["  ", 1, 1, null, 2, null], // not a user name
    ["bob", true, 1, null, 2, null], // online a boolean, not 1 or 0
    ["bob", 2, 1, null, 2, null],
    ["bob", 1, "1", null, 2, null], // connections not an integer
    ["bob", 1, 1.5, null, 2, null],
    ["bob", 1, -1, null, 2, null],
    ["bob", 1, 1, 7, 2, null], // status neither a string nor null
    ["bob", 1, 1, undefined, 2, null],
    ["bob", 1, 1, null, -1, null], // the offset negative, fractional or not a number
    ["bob", 1, 1, null, 0.5, null],
    ["bob", 1, 1, null, "2", null],
    ["bob", 0, 0, null, 2, 1764756000000], // lastSeen not a string
    state("bob", V + 2), // the old format: an object, not a tuple
    null,
    "bob",
    good("cy", 3),
  ];
  assert.doesNotThrow(() => connection.deliver("presenceBatch", { room: "big", base: V, users }));
  assert.deepEqual(
    events.map(([event, user, current]) => [event, user, current.version - V]),
    [
      ["change", "ada", 1],
      ["change", "cy", 3],
    ],
  );
  assert.equal(presence.of("bob"), undefined);
  for (const base of [undefined, "1780000000000", 1.5, null]) {
    connection.deliver("presenceBatch", { room: "big", base, users: [good("dee", 1)] }); // no base: no version
  }
  connection.deliver("presenceBatch", { base: V, users: [good("dee", 1)] }); // no room
  connection.deliver("presenceBatch", { room: "big", base: V, users: "dee" });
  await settle();
  assert.equal(presence.of("dee"), undefined);
  assert.equal(events.length, 2, "nothing else, and no error event");
});

test("a snapshot after a batch merges by version, entry by entry", async () => {
  const { connection, presence, events } = tracked();
  await presence.join("big");
  connection.deliver("presenceBatch", batchOf("big", [state("ada", V + 5), state("bob", V + 7)]));
  connection.deliver("presenceSync", {
    room: "big",
    users: [state("ada", V + 6, false), state("bob", V + 3, false), state("cy", V + 1)],
    page: 1,
    pages: 1,
  });
  assert.deepEqual(
    events.map(([event, first, second]) => [event, first, second && second.version - V]),
    [
      ["change", "ada", 5],
      ["change", "bob", 7],
      ["change", "ada", 6],
      ["change", "cy", 1],
      ["sync", "big", undefined],
    ],
  );
  assert.deepEqual(
    presence.members("big").map((member) => [member.user, member.version - V, member.online]),
    [
      ["ada", 6, false],
      ["bob", 7, true],
      ["cy", 1, true],
    ],
  );
  connection.deliver("presenceBatch", batchOf("big", [state("cy", V + 1, false), state("cy", V + 2, false)]));
  assert.deepEqual([presence.of("cy").version, presence.of("cy").online], [V + 2, false], "and a batch after it");
});

test("a batch for a room not joined merges as a single presence message of that room does (by version)", () => {
  const single = tracked();
  const batched = tracked();
  single.connection.deliver("presence", state("ada", V + 4, true, { room: "elsewhere" }));
  batched.connection.deliver("presenceBatch", batchOf("elsewhere", [state("ada", V + 4)]));
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
