// A big room end to end: the real @microsoft/signalr client through the emulator and the local host, with rooms of
// more than two members batched (ROOM_BATCH_ABOVE=2), so a room of three hears its members' changes as presenceBatch.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { trackPresence } from "../presence.js";
import { billed, connected, next, occupancyOf, presenceOf, startStack, uniqueUser, until } from "./support.mjs";

let stack;
const open = [];

async function tab(user) {
  const connection = await connected(stack, user);
  open.push(connection);
  return { user, connection, presence: trackPresence(connection) };
}

before(async () => {
  stack = await startStack({ PRESENCE_GRACE_SECONDS: "0", ROOM_BATCH_ABOVE: "2", ROOM_BATCH_SECONDS: "1" });
});

after(async () => {
  await Promise.allSettled(open.map((connection) => connection.stop()));
  await stack?.stop();
});

/** Decode a presenceBatch argument as the client library does: one presence entry per member, with the room. */
function entries(batch) {
  return batch.users.map(([user, online, connections, status, offset, lastSeen]) => ({
    user,
    online: online === 1,
    connections,
    status,
    lastSeen,
    version: batch.base + offset,
    room: batch.room,
  }));
}

describe("a big room", () => {
  test("members hear each other's latest state in batches, exactly as a small room tells it", async () => {
    const big = uniqueUser("big").replace("-", "_");
    const duo = uniqueUser("duo").replace("-", "_");
    const [a, b, c] = await Promise.all([tab(uniqueUser("Ann")), tab(uniqueUser("Bo")), tab(uniqueUser("Cy"))]);
    for (const member of [a, b, c]) {
      await Promise.all([member.presence.join(big), next(member.presence, "sync", (room) => room === big)]);
    }
    await Promise.all([a.presence.join(duo), next(a.presence, "sync", (room) => room === duo)]);
    await Promise.all([b.presence.join(duo), next(b.presence, "sync", (room) => room === duo)]);
    await until(async () => (await occupancyOf(stack, big)).members === 3, "three members");

    const single = []; // b's changes as the small room tells them
    const batched = []; // every entry of the big room's batches, as heard by c
    a.connection.on("presence", (change) => change.room === duo && single.push(change));
    c.connection.on("presenceBatch", (batch) => batched.push(...entries(batch)));
    const before = await billed(stack);

    await b.presence.setStatus("busy");
    await a.presence.setStatus("away");
    await c.presence.setStatus("here");
    await b.presence.setStatus("back");
    const truth = async (member) => presenceOf(stack, member.user);
    for (const [listener, others] of [
      [a, [b, c]],
      [c, [a, b]],
    ]) {
      for (const other of others) {
        // setStatus is sent without waiting: the server's state is read again at each poll, as it may still move.
        const told = async () => listener.presence.of(other.user)?.status === (await truth(other)).status;
        await until(told, `${other.user} at its member`, 60000); // a flush a second, on a busy machine
        assert.equal(listener.presence.of(other.user).online, true);
      }
    }
    await until(() => single.some((change) => change.status === "back"), "the small room's change");
    await until(() => batched.some((entry) => entry.user === b.user && entry.status === "back"), "the batch");
    const told = single.find((change) => change.status === "back");
    const inBatch = batched.find((entry) => entry.user === b.user && entry.version === told.version);
    assert.deepEqual({ ...inBatch, room: duo }, told, "a batch entry states what the presence message states");

    const after = await billed(stack);
    const byGroup = (counts, group) => counts.byGroup[group] ?? 0;
    assert.ok((after.byTarget.presenceBatch ?? 0) > (before.byTarget.presenceBatch ?? 0), "the big room had batches");
    const perChange = byGroup(after, duo) - byGroup(before, duo);
    assert.ok(perChange >= 2 * 2, "the small room hears each change of its members at once (2 members)");
    const state = await truth(c);
    assert.deepEqual(
      [a.presence.of(c.user).version, a.presence.of(c.user).status],
      [state.version ?? a.presence.of(c.user).version, state.status],
    );
  });

  test("a watcher of the big room's occupancy hears its counts, not its members' presence", async () => {
    const room = uniqueUser("hall").replace("-", "_");
    const [w, m1, m2, m3] = await Promise.all(["W", "M1", "M2", "M3"].map((name) => tab(uniqueUser(name))));
    for (const member of [m1, m2, m3]) await member.presence.join(room);
    await until(async () => (await occupancyOf(stack, room)).members === 3, "three members");
    const kept = []; // what the library keeps: an occupancy message older than the one held is dropped
    w.presence.on("occupancy", (occupancy) => kept.push(occupancy));
    w.connection.on("presenceBatch", () => assert.fail("a watcher of the counts hears no member's presence"));
    // An older group message may come before the call's answer: the library keeps the newest, whichever comes first.
    await w.presence.watchOccupancy(room);
    await until(() => w.presence.occupancy(room)?.members === 3, "the watch's answer", 60000);
    assert.deepEqual([w.presence.occupancy(room).members, w.presence.occupancy(room).online], [3, 3]);
    const down = next(w.presence, "occupancy", (o) => o.room === room && o.online === 2);
    await m3.connection.stop();
    const [occupancy] = await down;
    assert.equal(occupancy.members, 3);
    const server = await occupancyOf(stack, room);
    assert.deepEqual([server.members, server.online, server.version], [3, 2, occupancy.version]);
    assert.ok(kept.length >= 2 && kept.every((o, n) => n === 0 || o.version > kept[n - 1].version), "versions grow");
  });
});
