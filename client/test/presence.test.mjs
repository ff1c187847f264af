// The presence tracker against the real stack: Azurite, the SignalR emulator and the local host (started here).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { trackPresence } from "../presence.js";
import {
  billed,
  connected,
  connectionFor,
  drop,
  next,
  occupancyOf,
  presenceOf,
  startStack,
  uniqueUser,
  until,
} from "./support.mjs";

let stack;
const open = [];

async function tab(user, options) {
  const connection = await connected(stack, user, options);
  open.push(connection);
  return { connection, presence: trackPresence(connection) };
}

before(async () => {
  stack = await startStack({ PRESENCE_GRACE_SECONDS: "0" });
});

after(async () => {
  await Promise.allSettled(open.map((connection) => connection.stop()));
  await stack?.stop();
});

describe("rooms", () => {
  test("join answers the members' presence, and their changes and joins follow, merged by version", async () => {
    const room = uniqueUser("room").replace("-", "_");
    const ada = uniqueUser("Ada");
    const bob = uniqueUser("Bob");
    const a = await tab(ada);
    await Promise.all([a.presence.join(room), next(a.presence, "sync", (synced) => synced === room)]);
    assert.deepEqual(
      a.presence.members(room).map((state) => [state.user, state.online]),
      [[ada, true]],
    );
    const joined = next(a.presence, "members", (r, user, isIn) => r === room && user === bob && isIn);
    const b = await tab(bob);
    await Promise.all([b.presence.join(room), next(b.presence, "sync", (synced) => synced === room), joined]);
    assert.deepEqual(new Set(b.presence.members(room).map((state) => state.user)), new Set([ada, bob]));
    await until(() => a.presence.of(bob)?.online, "bob online at ada's tab");

    const busy = next(a.presence, "change", (user, state) => user === bob && state.status === "busy");
    await b.presence.setStatus("busy");
    const [, state, previous] = await busy;
    assert.ok(state.version > previous.version);
    assert.equal(a.presence.of(bob.toUpperCase()).status, "busy", "names compare as the server folds them");

    const offline = next(a.presence, "change", (user, s) => user === bob && !s.online);
    await b.connection.stop();
    const [, gone] = await offline;
    const server = await presenceOf(stack, bob);
    assert.equal(gone.version, server.version ?? gone.version);
    assert.equal(server.online, false);
    assert.equal(gone.lastSeen !== null, true);
    assert.deepEqual(
      a.presence.members(room).find((member) => member.user === bob),
      gone,
      "members carry the latest state",
    );
  });

  test("a repeated state (same version) is not a change", async () => {
    const cy = uniqueUser("cy");
    const c = await tab(cy);
    const changes = [];
    c.presence.on("change", (user, state) => changes.push(state.version));
    const first = next(c.presence, "change", (user, state) => state.status === "away");
    await c.presence.setStatus("away");
    await first;
    const before = await billed(stack);
    await c.presence.setStatus("away"); // the server repeats the recorded pair, same version
    await until(async () => (await billed(stack)).byTarget.presence > before.byTarget.presence, "the repeat");
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(changes.length, new Set(changes).size, "each version is one change");
    assert.equal(c.presence.of(cy).status, "away");
  });
});

describe("a big room", () => {
  test("a room of more than 100 members arrives in pages and is assembled before sync", async () => {
    const room = uniqueUser("big").replace("-", "_");
    const names = Array.from({ length: 105 }, (_, n) => uniqueUser(`m${n}`));
    for (let start = 0; start < names.length; start += 15) {
      const batch = await Promise.all(names.slice(start, start + 15).map((name) => connected(stack, name)));
      open.push(...batch);
      await Promise.all(batch.map((connection) => connection.send("join", room)));
    }
    const newcomer = await tab(uniqueUser("newcomer"));
    const pages = [];
    newcomer.connection.on("presenceSync", (snapshot) => pages.push(snapshot.page));
    await until(async () => (await occupancyOf(stack, room)).members === names.length, "every join");
    await Promise.all([newcomer.presence.join(room), next(newcomer.presence, "sync", (r) => r === room)]);
    assert.deepEqual(pages.toSorted(), [1, 2]);
    const members = newcomer.presence.members(room);
    assert.equal(members.length, 106);
    assert.ok(members.every((member) => member.online && member.version > 0));
  });
});

describe("watch", () => {
  test("watch answers a snapshot, then changes; unwatch ends them", async () => {
    const watcher = await tab(uniqueUser("watcher"));
    const dee = uniqueUser("Dee");
    await Promise.all([watcher.presence.watch([dee]), next(watcher.presence, "sync", (room) => room === null)]);
    assert.deepEqual(
      [watcher.presence.of(dee)?.online, watcher.presence.of(dee)?.version],
      [false, 0],
      "never seen: version 0",
    );
    assert.deepEqual(watcher.presence.watched(), [dee]);
    const online = next(watcher.presence, "change", (user, state) => user === dee && state.online);
    const d = await tab(dee);
    await online;

    await watcher.presence.unwatch([dee.toUpperCase()]);
    assert.deepEqual(watcher.presence.watched(), []);
    await until(async () => (await billed(stack)).byTarget.presence !== undefined, "billing");
    const heard = watcher.presence.of(dee).version;
    const own = next(d.presence, "change", (user, state) => state.status === "later");
    await new Promise((resolve) => setTimeout(resolve, 300)); // the unwatch's group removal
    await d.presence.setStatus("later");
    await own; // dee's own tab hears it; the former watcher must not
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(watcher.presence.of(dee).version, heard);
  });
});

describe("reconnect", () => {
  test("after an automatic reconnect, joins, watches and the status are sent again, with fresh snapshots", async () => {
    const room = uniqueUser("again").replace("-", "_");
    const eve = uniqueUser("eve");
    const fay = uniqueUser("fay");
    const e = await tab(eve, { reconnect: true });
    await Promise.all([e.presence.join(room), next(e.presence, "sync", (r) => r === room)]);
    await Promise.all([e.presence.watch([fay]), next(e.presence, "sync", (r) => r === null)]);
    await e.presence.setStatus("here");
    await until(async () => (await presenceOf(stack, eve)).status === "here", "eve's status");

    const roomAgain = next(e.presence, "sync", (r) => r === room);
    const watchAgain = next(e.presence, "sync", (r) => r === null);
    const firstId = e.connection.connectionId;
    await drop(stack, firstId);
    await Promise.all([roomAgain, watchAgain]);
    assert.notEqual(e.connection.connectionId, firstId);
    await until(async () => (await presenceOf(stack, eve)).status === "here", "the status sent again");

    const online = next(e.presence, "change", (user, state) => user === fay && state.online);
    await tab(fay);
    await online; // the watch holds on the new connection
  });
});

describe("errors", () => {
  test("bad input throws in the caller's code and sends nothing", async () => {
    const { connection, presence } = await tab(uniqueUser("gil"));
    const sent = [];
    const send = connection.send.bind(connection);
    connection.send = (...args) => {
      sent.push(args);
      return send(...args);
    };
    assert.throws(() => presence.join(5), TypeError);
    assert.throws(() => presence.join("no spaces"), RangeError);
    assert.throws(() => presence.leave(""), RangeError);
    assert.throws(() => presence.watch("ada"), TypeError);
    assert.throws(() => presence.watch(Array.from({ length: 101 }, (_, n) => `u${n}`)), RangeError);
    assert.throws(() => presence.watch(["ok", "  "]), RangeError);
    assert.throws(() => presence.watch(["ok", 7]), TypeError);
    assert.throws(() => presence.unwatch([null]), TypeError);
    assert.throws(() => presence.setStatus(5), TypeError);
    assert.throws(() => presence.setStatus("x".repeat(65)), RangeError);
    assert.throws(() => presence.setStatus("a\u0007b"), RangeError);
    assert.throws(() => presence.sync("never-joined"), RangeError);
    assert.throws(() => presence.on("nothing", () => {}), RangeError);
    assert.deepEqual(sent, []);
  });

  test("calls before start() throw and send nothing", async () => {
    const connection = connectionFor(stack, uniqueUser("hal"));
    const presence = trackPresence(connection);
    assert.throws(() => presence.join("lobby"), /start\(\)/);
    assert.throws(() => presence.watch(["ada"]), /start\(\)/);
    assert.throws(() => presence.setStatus("x"), /start\(\)/);
    assert.deepEqual(presence.rooms(), []);
    assert.throws(() => trackPresence({}), TypeError);
  });

  test("an error that asks no retry reaches on('error') with the call it answers", async () => {
    const { connection, presence } = await tab(uniqueUser("ike"));
    const failed = next(presence, "error");
    await connection.send("send", uniqueUser("nobody"), "hello?");
    const [error] = await failed;
    assert.equal(error.call, "send");
    assert.equal(error.error, "recipient is offline");
  });
});

describe("retries", () => {
  let gated;
  before(async () => {
    gated = await startStack({ PRESENCE_GRACE_SECONDS: "0" }, { gate: true });
  });
  after(async () => {
    await gated?.stop();
  });

  test("a call answered retry: true is sent again with backoff until storage answers", async () => {
    const connection = await connected(gated, uniqueUser("jo"));
    open.push(connection);
    const presence = trackPresence(connection, { retryDelayMs: 500, retries: 8 });
    const errors = [];
    presence.on("error", (error) => errors.push(error));
    const sent = [];
    const send = connection.send.bind(connection);
    connection.send = (...args) => {
      sent.push(args[0]);
      return send(...args);
    };
    gated.gate.shut();
    const synced = next(presence, "sync", (room) => room === "retried", 60000);
    await presence.join("retried");
    await until(() => sent.length >= 2, "a retry", 40000);
    gated.gate.reopen();
    await synced;
    assert.deepEqual(errors, [], "a retried call surfaces no error");
    assert.ok(sent.every((method) => method === "join"));
    assert.equal(presence.members("retried").length, 1);
  });
});

describe("budget", () => {
  let tight;
  before(async () => {
    tight = await startStack({ PRESENCE_GRACE_SECONDS: "0", CLIENT_CALL_BURST: "2", CLIENT_CALL_RATE: "2" });
  });
  after(async () => {
    await tight?.stop();
  });

  test("over its budget a tab waits retryAfter before it sends again, and every join lands", async () => {
    const connection = await connected(tight, uniqueUser("kit"));
    open.push(connection);
    const presence = trackPresence(connection);
    const errors = [];
    presence.on("error", (error) => errors.push(error));
    const refusals = [];
    connection.on("error", (error) => {
      if (error?.error === "too many calls") refusals.push({ at: Date.now(), retryAfter: error.retryAfter });
    });
    const sent = [];
    const send = connection.send.bind(connection);
    connection.send = (...args) => {
      sent.push({ at: Date.now(), call: args[0], argument: args[1] });
      return send(...args);
    };
    const rooms = ["b1", "b2", "b3", "b4", "b5"].map((room) => `${room}_${uniqueUser("r").slice(-6)}`);
    const synced = rooms.map((room) => next(presence, "sync", (r) => r === room, 30000));
    await Promise.all(rooms.map((room) => presence.join(room)));
    await Promise.all(synced);
    assert.deepEqual(errors, [], "no refusal reaches the app");
    assert.ok(refusals.length >= 1, "the server refused some joins");
    const [first] = refusals;
    const later = sent.filter((call) => call.at > first.at);
    assert.ok(later.length >= 1, "the refused joins were sent again");
    assert.ok(later[0].at - first.at >= first.retryAfter * 1000 - 50, "not before retryAfter");
    assert.deepEqual(new Set(presence.rooms()), new Set(rooms));
  });
});
