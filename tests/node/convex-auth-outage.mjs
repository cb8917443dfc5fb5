// The official `convex` client signed in through a query service that cannot reach auth (its
// link to auth partitioned; the gateway, which hands out tokens, reaches auth). Usage:
//   node convex-auth-outage.mjs '{"url": <query service>, "site": <gateway>}'
// Prints one JSON line per phase and reads the test's steps on stdin:
//   "down"  the client has reconnected four times (or was signed out): its auth callback's
//           calls so far and what users:me showed;
//   on "healed":
//   "done"  users:me shows the user (or a timeout), with the auth callback's calls.
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";
import { phase, step } from "./phases.mjs";
import { until } from "./until.mjs";

const { url, site } = JSON.parse(process.argv[2]);
const email = "outage-npm@example.com";

const signUp = await fetch(`${site}/api/auth/sign-up/email`, {
  method: "POST",
  headers: { "content-type": "application/json", origin: site },
  body: JSON.stringify({ name: "Outage", email, password: "correct horse battery staple" }),
});
if (!signUp.ok) throw new Error(`sign-up ${signUp.status}`);
const cookie = signUp.headers.get("set-cookie").split(";")[0];
async function fetchToken() {
  const response = await fetch(`${site}/api/auth/convex/token`, { headers: { cookie } });
  if (!response.ok) return null;
  return (await response.json()).token;
}


const client = new ConvexClient(url, { webSocketConstructor: WebSocket });
const authChanges = [];
let me = null;
try {
  client.setAuth(fetchToken, (isAuthenticated) => authChanges.push(isAuthenticated));
  client.onUpdate(api.users.me, {}, (v) => (me = v?.email ?? null));
  await until(
    () => authChanges.includes(false) || client.connectionState().connectionCount >= 5,
    "four reconnects or a sign-out",
    60_000,
  );
  phase("down", { authChanges, me, connectionCount: client.connectionState().connectionCount });

  await step("healed");
  // convex-js backs off up to 16 s (with jitter) between reconnects.
  await until(() => me === email || authChanges.includes(false), "users:me signed in", 90_000);
  phase("done", { authChanges, me });
} catch (error) {
  phase("error", { error: String(error?.stack ?? error), authChanges, me });
}
await client.close();
process.exit(0);
