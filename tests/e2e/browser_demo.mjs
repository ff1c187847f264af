// Scenarios on the demo page in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core).
// Usage: node tests/e2e/browser_demo.mjs http://127.0.0.1:<port>/ <scenario>
// Scenarios: chat, connections, status, rooms, bad-room, retry. Each prints one line per step it saw happen and
// exits 0 when every step happened; every wait is for a condition on the page, bounded by `timeout`. A page that
// requests any /api/ route but negotiate fails the scenario: deployed, those need a function key.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const base = process.argv[2];
const scenario = process.argv[3] ?? "chat";
const suffix = Math.random().toString(16).slice(2, 8);
const timeout = 30000;
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "chromium-e2e-"));

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  timeout: 60000,
});

function step(text) {
  console.log(text);
}

const keyedRequests = []; // /api/ routes other than negotiate that a page requested

// A new tab on the demo page; `connect` signs in as `user` and waits until connected.
async function open(user, { connect = true, before, query = "" } = {}) {
  const page = await context.newPage();
  page.on("request", (request) => {
    const url = new URL(request.url());
    if (url.pathname.startsWith("/api/") && url.pathname !== "/api/negotiate") keyedRequests.push(url.pathname);
  });
  page.on("console", (message) => console.log(`[${user} console] ${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => console.log(`[${user} pageerror] ${error}`));
  if (before) await before(page);
  await page.goto(base + query, { timeout });
  // Set once per document: still there at the end means the page was never reloaded.
  await page.evaluate(() => (window.loadedOnce = true));
  if (connect) {
    await page.fill("#name", user);
    await click(page, "#connect");
    await page.waitForSelector('#status[data-state="connected"]', { timeout });
    step(`${user} connected`);
  }
  return page;
}

// Acts on a tab brought to the front: a tab behind others gets animation frames only now and then, so
// Playwright's wait for a stable element would take seconds.
async function click(page, selector) {
  await page.bringToFront();
  await page.click(selector, { timeout });
}

const waitFor = (page, selector, options = {}) => page.waitForSelector(selector, { timeout, ...options });

async function waitForText(page, selector, text) {
  await page.waitForFunction(
    ([selector, text]) => [...document.querySelectorAll(selector)].some((node) => node.textContent.includes(text)),
    [selector, text],
    { timeout },
  );
}

async function waitForRows(page, selector, count) {
  await page.waitForFunction(([s, n]) => document.querySelectorAll(s).length === n, [selector, count], { timeout });
}

async function expectNoReload(page, who) {
  if (!(await page.evaluate(() => window.loadedOnce === true))) throw new Error(`${who}'s page was reloaded`);
}

async function say(page, to, text) {
  await page.fill("#to", to);
  await page.fill("#message", text);
  await click(page, "#send");
}

async function expectMessage(page, from, text) {
  await page.waitForFunction(
    ([from, text]) =>
      [...document.querySelectorAll("#messages li")].some((li) => li.textContent === `${from}: ${text}`),
    [from, text],
    { timeout },
  );
}

async function watch(page, users) {
  await page.fill("#watch-names", users.join(", "));
  await click(page, "#watch");
}

async function join(page, room) {
  await page.fill("#room-name", room);
  await click(page, "#join");
}

const roomSection = (room) => `#rooms section[data-room="${room}"]`;

const scenarios = {
  // Two users chat and see each other come and go.
  async chat() {
    const alice = `alice-${suffix}`;
    const bob = `bob-${suffix}`;
    const alicePage = await open(alice);
    await watch(alicePage, [bob]);
    const bobPage = await open(bob);
    await waitFor(alicePage, `#users li[data-user="${bob}"]`);
    step("alice sees bob online");
    await say(alicePage, bob, "hello bob");
    await expectMessage(bobPage, alice, "hello bob");
    step("bob received alice's message");
    await say(bobPage, alice, "hi alice");
    await expectMessage(alicePage, bob, "hi alice");
    step("alice received bob's reply");
    await click(bobPage, "#disconnect");
    await waitFor(alicePage, `#users li[data-user="${bob}"]`, { state: "detached" });
    step("alice sees bob go offline");
  },

  // Two tabs of one user, then one closes: a watcher's page counts 2, then 1, then shows the last seen time.
  async connections() {
    const alice = `alice-${suffix}`;
    const carol = `carol-${suffix}`;
    const carolPage = await open(carol);
    await watch(carolPage, [alice]);
    const first = await open(alice);
    const second = await open(alice);
    const listed = `#users li[data-user="${alice}"]`;
    await waitFor(carolPage, `${listed}[data-connections="2"]`);
    step("carol sees alice with 2 connections");
    await second.close();
    await waitFor(carolPage, `${listed}[data-connections="1"]`);
    step("carol sees alice with 1 connection after a tab closed");
    await first.close();
    await waitFor(carolPage, listed, { state: "detached" });
    await waitForText(carolPage, `#offline li[data-user="${alice}"]`, "last seen");
    step("carol sees alice offline with a last-seen time");
    await expectNoReload(carolPage, "carol");
    step("carol's page was never reloaded");
  },

  // A status set on one page shows on another, next to the user and on their connection, and clears.
  async status() {
    const alice = `alice-${suffix}`;
    const bob = `bob-${suffix}`;
    const alicePage = await open(alice);
    const bobPage = await open(bob);
    await watch(bobPage, [alice]);
    await waitFor(bobPage, `#users li[data-user="${alice}"]`);
    await alicePage.fill("#my-status", "x".repeat(65));
    await click(alicePage, "#set-status");
    await waitForText(alicePage, "#status-error", "at most 64 characters");
    step("a status over 64 characters is refused on the page");
    await alicePage.fill("#my-status", "in a meeting");
    await click(alicePage, "#set-status");
    await waitForText(bobPage, `#users li[data-user="${alice}"] .user-status`, "in a meeting");
    step("bob sees alice's status in the online list");
    await click(alicePage, "#clear-status");
    await waitFor(bobPage, `#users li[data-user="${alice}"] .user-status`, { state: "detached" });
    step("bob sees alice's status cleared");
    await expectNoReload(bobPage, "bob");
  },

  // Two users join a room, talk in it, a new tab finds its rooms, and a leave reaches the other member.
  async rooms() {
    const alice = `alice-${suffix}`;
    const bob = `bob-${suffix}`;
    const room = `lobby-${suffix}`;
    const alicePage = await open(alice);
    const bobPage = await open(bob);
    await join(alicePage, room);
    await join(bobPage, room);
    for (const [page, other] of [[alicePage, bob], [bobPage, alice]]) {
      await waitFor(page, `${roomSection(room)} .members li[data-user="${other}"][data-online="true"]`);
    }
    step("both pages list both members of the room");
    await alicePage.fill(`${roomSection(room)} .room-message`, "hello room");
    await click(alicePage, `${roomSection(room)} .send-room`);
    await waitForText(bobPage, `${roomSection(room)} .room-messages li`, `${alice}: hello room`);
    step("bob's room shows alice's message");
    const bobAgain = await open(bob);
    await waitFor(bobAgain, `${roomSection(room)} .members li[data-user="${alice}"]`);
    step("bob's new tab lists the room it is in");
    await waitFor(alicePage, `${roomSection(room)} .members li[data-user="${bob}"][data-connections="2"]`);
    step("alice's member list follows bob's connections");
    await click(bobPage, `${roomSection(room)} .leave-room`);
    await waitFor(alicePage, `${roomSection(room)} .members li[data-user="${bob}"]`, { state: "detached" });
    await waitFor(bobAgain, roomSection(room), { state: "detached" });
    step("bob left: alice's member list and bob's other tab follow");
    await expectNoReload(alicePage, "alice");
  },

  // A bad room name is refused on the page, and the server's errors are shown too.
  async "bad-room"() {
    const alice = `alice-${suffix}`;
    const page = await open(alice);
    await join(page, "bad room!");
    await waitForText(page, "#room-error", "is not a room name");
    step("the page refuses a bad room name");
    // Past the page's own check, straight to the hub: the server's answer is shown.
    await page.evaluate(() => connection.send("join", "bad room!"));
    await waitForText(page, "#room-error", "room must be 1-64 characters");
    step("the page shows the server's error for a bad room name");
    await page.evaluate((room) => connection.send("sendToRoom", room, "hello"), `elsewhere-${suffix}`);
    await waitForText(page, "#room-error", "not a member of this room");
    step("the page shows the server's error for a room it is not in");
    if ((await page.$$(`#rooms section.room`)).length !== 0) throw new Error("a room panel appeared");
  },

  // A join answered "retry" (storage failed) is sent once more; a second failure gives up.
  async retry() {
    const alice = `alice-${suffix}`;
    const flaky = `flaky-${suffix}`;
    const down = `down-${suffix}`;
    const joins = new Map(); // room → join calls the page sent
    const failures = new Map([[flaky, 1], [down, 100]]); // room → how many of its joins to answer with "retry"
    const answer = (room) => ({ error: "the connection store is unavailable, try again", retry: true, call: "join", arguments: [room] });
    const unavailable = (room) => ({ type: 1, target: "error", arguments: [answer(room)] });
    const page = await open(alice, {
      query: "?retries=2",
      before: (page) =>
        page.routeWebSocket(
          () => true,
          (ws) => {
            const server = ws.connectToServer();
            ws.onMessage((frame) => {
              const records = typeof frame === "string" ? frame.split("\x1e").filter(Boolean) : null;
              if (!records) return server.send(frame);
              const forwarded = [];
              for (const record of records) {
                const message = JSON.parse(record);
                const room = message.type === 1 && message.target === "join" ? message.arguments[0] : null;
                if (room !== null) joins.set(room, (joins.get(room) ?? 0) + 1);
                if (room !== null && joins.get(room) <= (failures.get(room) ?? 0)) {
                  ws.send(JSON.stringify(unavailable(room)) + "\x1e"); // as the app answers when storage failed
                } else {
                  forwarded.push(record + "\x1e");
                }
              }
              if (forwarded.length) server.send(forwarded.join(""));
            });
          },
        ),
    });
    await join(page, flaky);
    await waitFor(page, roomSection(flaky));
    if (joins.get(flaky) !== 2) throw new Error(`${joins.get(flaky)} joins of ${flaky} were sent, not 2`);
    step("a join answered retry was sent again and the room joined");
    await join(page, down);
    await waitForText(page, "#room-error", "gave up");
    if (joins.get(down) !== 3) throw new Error(`${joins.get(down)} joins of ${down} were sent, not 3`);
    if (await page.$(roomSection(down))) throw new Error(`${down} was joined`);
    step("a join answered retry every time gave up after two retries");
  },
};

let failed = false;
try {
  if (!(scenario in scenarios)) throw new Error(`unknown scenario ${scenario}`);
  await scenarios[scenario]();
  if (keyedRequests.length) throw new Error(`the page requested keyed routes: ${[...new Set(keyedRequests)]}`);
  step("the page requested no route but negotiate");
} catch (error) {
  failed = true;
  console.log(`FAILED: ${error}`);
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
