// The official `convex` client through convex-edge's query service. Usage:
//   node convex-proxy.mjs '{"url": <query service>, "site": <gateway>}'
// Signs up through the gateway, takes tokens from /api/auth/convex/token, and prints one JSON
// line per phase; after the first it waits for "restarted" on stdin (the test restarts the
// proxy), then checks the client reconnected on its own.
import { createInterface } from "node:readline";
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";
import { until } from "./until.mjs";

const { url, site } = JSON.parse(process.argv[2]);
const out = {};


async function signUp(email) {
  const response = await fetch(`${site}/api/auth/sign-up/email`, {
    method: "POST",
    // Node's fetch sends `Sec-Fetch-Mode: cors`, so the origin is checked, as a browser's is.
    headers: { "content-type": "application/json", origin: site },
    body: JSON.stringify({ name: "Npm User", email, password: "correct horse battery staple" }),
  });
  if (!response.ok) throw new Error(`sign-up ${response.status}`);
  return response.headers.get("set-cookie").split(";")[0];
}

const cookie = await signUp("npm@example.com");
let tokenFetches = 0;
async function fetchToken() {
  tokenFetches += 1;
  const response = await fetch(`${site}/api/auth/convex/token`, { headers: { cookie } });
  return (await response.json()).token;
}

const client = new ConvexClient(url, { webSocketConstructor: WebSocket });
const other = new ConvexClient(url, { webSocketConstructor: WebSocket });
let mine = [];
let theirs = [];
try {
  client.onUpdate(api.messages.list, { channel: "general" }, (m) => (mine = m.map((x) => x.body)));
  other.onUpdate(api.messages.list, { channel: "general" }, (m) => (theirs = m.map((x) => x.body)));
  client.setAuth(fetchToken);
  let me;
  client.onUpdate(api.users.me, {}, (v) => (me = v?.email));
  await until(() => me, "users:me");
  out.me = me;

  await client.mutation(api.messages.send, { channel: "general", body: "from npm" });
  out.ownListAtResolve = mine.includes("from npm");
  await until(() => theirs.includes("from npm"), "the other client to see it");
  out.seenByOther = true;
  const echoed = await client.action(api.demo.echo, { n: 123n });
  out.echoInt64 = echoed.n === 123n;

  // Tokens last 13 s and the client refreshes 10 s before expiry.
  await until(() => tokenFetches >= 2, "a token refresh", 15_000);
  out.tokenFetches = tokenFetches;
  await new Promise((r) => setTimeout(r, 500));
  out.meAfterRefresh = me;
  out.ok = true;
} catch (error) {
  out.ok = false;
  out.error = String(error?.stack ?? error);
}
console.log(JSON.stringify({ phase: "before-restart", ...out }));

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (line.trim() === "restarted") break;
}
const after = {};
const withTimeout = (promise, what, ms = 30_000) =>
  Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms))]);
try {
  console.error("proxy restarted; sending a mutation");
  await withTimeout(client.mutation(api.messages.send, { channel: "general", body: "after restart" }), "the mutation after the restart");
  await until(() => theirs.includes("after restart") && mine.includes("after restart"), "both clients after the restart");
  after.seenAfterRestart = true;
  after.ok = true;
} catch (error) {
  after.ok = false;
  after.error = String(error?.stack ?? error);
}
console.log(JSON.stringify({ phase: "after-restart", ...after }));
await Promise.all([client.close(), other.close()]);
process.exit(0);
