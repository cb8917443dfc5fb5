// The demo in a real browser (Debian chromium driven by playwright-core) against
// `convex-edge dev`: sign up, see the server-rendered chat, send a message from a second
// browser context and watch it arrive live in the first; keep a private task list.
// Usage: node browser.mjs <site url> <query service url> <screenshot path>
// Prints one JSON line with what it saw.
import { chromium } from "playwright-core";

const [site, queryUrl, screenshot] = process.argv.slice(2);
const PASSWORD = "correct horse battery staple";

async function subscriptions() {
  const text = await (await fetch(`${queryUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("edge_query_downstream_subscriptions "));
  return Number(line.split(" ")[1]);
}

async function until(what, check, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function signUp(context, name, email) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error:`, e.message));
  await page.goto(`${site}/sign-up`);
  await page.fill("#name", name);
  await page.fill("#email", email);
  await page.fill("#password", PASSWORD);
  await Promise.all([page.waitForURL(`${site}/`), page.click("button[type=submit]")]);
  await page.waitForSelector('html[data-convex-edge="live"]');
  return page;
}

async function send(page, body) {
  await page.fill("#body", body);
  await page.click("#send button[type=submit]");
  // The mutation resolves once the page shows it, and the form clears then.
  await page.waitForFunction(() => document.getElementById("body").value === "");
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
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
});
const out = {};
try {
  const alice = await browser.newContext();
  const bob = await browser.newContext();

  const a = await signUp(alice, "Alice", "alice@example.com");
  out.aliceName = await a.textContent("#user-name");
  await send(a, "hello from Alice");
  out.aliceSeesOwn = (await a.textContent("#messages")).includes("hello from Alice");
  // One subscription for the page's live query; `config` is `subscribe: false`.
  out.subscriptionsOnePage = await until("Alice's subscription", async () =>
    (await subscriptions()) === 1 ? 1 : 0,
  ).catch(async () => subscriptions());

  // Bob's first HTML already holds Alice's message, before any script runs.
  const raw = await bob.request.get(`${site}/`);
  out.ssrHasAlice = (await raw.text()).includes("hello from Alice");
  const b = await signUp(bob, "Bob", "bob@example.com");
  out.subscriptionsTwoPages = await until("Bob's subscription", async () =>
    (await subscriptions()) === 2 ? 2 : 0,
  ).catch(async () => subscriptions());
  const sentAt = Date.now();
  await send(b, "hello from Bob");
  await a.waitForFunction(
    () => document.getElementById("messages").textContent.includes("hello from Bob"),
    null,
    { timeout: 10_000 },
  );
  out.liveMs = Date.now() - sentAt;
  await a.screenshot({ path: screenshot, fullPage: true });

  // A private task list: Alice's task is hers alone; `users:me` is fetched by the browser.
  await a.goto(`${site}/tasks`);
  await a.waitForSelector('html[data-convex-edge="live"]');
  await a.fill("#text", "water the plants");
  await a.click("#add button[type=submit]");
  await a.waitForFunction(() => document.getElementById("tasks").textContent.includes("water the plants"));
  await a.waitForFunction(() => document.getElementById("me").textContent.includes("alice@example.com"));
  out.aliceMe = await a.textContent("#me");
  await b.goto(`${site}/tasks`);
  await b.waitForSelector('html[data-convex-edge="live"]');
  out.bobTasks = await b.textContent("#tasks");

  // Signing out ends the session for the page too.
  await a.goto(`${site}/`);
  await a.click("#sign-out");
  await a.waitForSelector('nav a[href="/sign-in"]');
  out.aliceSignedOut = (await a.locator("#user-name").count()) === 0;
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
