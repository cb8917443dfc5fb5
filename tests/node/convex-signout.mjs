// The official `convex` client through convex-edge's query service, signed out on the site.
// Usage: node convex-signout.mjs '{"url": <query service>, "site": <gateway>}'
// Signs up through the gateway, authenticates with tokens from /api/auth/convex/token, reads its
// own data, then signs out through the gateway and prints one JSON line: whether the client's
// auth callback saw the identity end, what users:me and tasks:list show afterwards, and how long
// that took (milliseconds, a figure, not a check).
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";
import { until } from "./until.mjs";

const { url, site } = JSON.parse(process.argv[2]);
const out = {};


const signUp = await fetch(`${site}/api/auth/sign-up/email`, {
  method: "POST",
  headers: { "content-type": "application/json", origin: site },
  body: JSON.stringify({ name: "Leaving", email: "leaving@example.com", password: "correct horse battery staple" }),
});
if (!signUp.ok) throw new Error(`sign-up ${signUp.status}`);
const cookie = signUp.headers.get("set-cookie").split(";")[0];

let refusedFetches = 0;
async function fetchToken() {
  const response = await fetch(`${site}/api/auth/convex/token`, { headers: { cookie } });
  if (!response.ok) {
    refusedFetches += 1;
    return null;
  }
  return (await response.json()).token;
}

const client = new ConvexClient(url, { webSocketConstructor: WebSocket });
const authChanges = [];
let me;
let tasks;
try {
  client.setAuth(fetchToken, (isAuthenticated) => authChanges.push(isAuthenticated));
  client.onUpdate(api.users.me, {}, (v) => (me = v?.email ?? null));
  client.onUpdate(api.tasks.list, {}, (v) => (tasks = v.map((t) => t.text)));
  await until(() => me === "leaving@example.com", "users:me signed in");
  await client.mutation(api.tasks.add, { text: "private" });
  await until(() => tasks?.includes("private"), "the private task");
  out.signedIn = authChanges.at(-1) === true;

  const started = Date.now();
  const signOut = await fetch(`${site}/api/auth/sign-out`, {
    method: "POST",
    headers: { cookie, origin: site, "content-type": "application/json" },
    body: "{}",
  });
  out.signOutStatus = signOut.status;
  await until(() => authChanges.at(-1) === false, "the auth callback to see the identity end", 20_000, 5);
  out.identityEndedMs = Date.now() - started;
  await until(() => me === null, "users:me signed out");
  await until(() => tasks && tasks.length === 0, "tasks:list anonymous");
  out.meAfter = me;
  out.tasksAfter = tasks;
  out.refusedFetches = refusedFetches;
  out.ok = true;
} catch (error) {
  out.ok = false;
  out.error = String(error?.stack ?? error);
  out.authChanges = authChanges;
  out.me = me;
}
console.log(JSON.stringify(out));
await client.close();
process.exit(0);
