// Two users chat on the demo page in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core).
// Usage: node tests/e2e/browser_chat.mjs http://127.0.0.1:<port>/ ; exits 0 when both messages arrived.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const base = process.argv[2];
const suffix = Math.random().toString(16).slice(2, 8);
const alice = `alice-${suffix}`;
const bob = `bob-${suffix}`;
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

async function open(user) {
  const page = await context.newPage();
  page.on("console", (message) => console.log(`[${user} console] ${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => console.log(`[${user} pageerror] ${error}`));
  await page.goto(base, { timeout });
  await page.fill("#name", user);
  await page.click("#connect");
  await page.waitForSelector('#status[data-state="connected"]', { timeout });
  console.log(`${user} connected`);
  return page;
}

async function say(page, to, text) {
  await page.fill("#to", to);
  await page.fill("#message", text);
  await page.click("#send");
}

async function expectMessage(page, from, text) {
  await page.waitForFunction(
    ([from, text]) => [...document.querySelectorAll("#messages li")].some((li) => li.textContent === `${from}: ${text}`),
    [from, text],
    { timeout },
  );
}

let failed = false;
try {
  const alicePage = await open(alice);
  const bobPage = await open(bob);
  // Presence: alice's list shows bob once he is online (a live update, no reload).
  await alicePage.waitForSelector(`#users li[data-user="${bob}"]`, { timeout });
  console.log("alice sees bob online");
  await say(alicePage, bob, "hello bob");
  await expectMessage(bobPage, alice, "hello bob");
  console.log("bob received alice's message");
  await say(bobPage, alice, "hi alice");
  await expectMessage(alicePage, bob, "hi alice");
  console.log("alice received bob's reply");
  await bobPage.click("#disconnect");
  await alicePage.waitForSelector(`#users li[data-user="${bob}"]`, { state: "detached", timeout });
  console.log("alice sees bob go offline");
} catch (error) {
  failed = true;
  console.log(`FAILED: ${error}`);
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
