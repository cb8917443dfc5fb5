// The official `convex` client's mutations in flight while the query service restarts (a rolling
// deploy): convex-js sends every mutation it has no transition past again on its next socket,
// and the restarted service has none of the first process's journal, so each must be settled
// before the old process lets the socket go, or not run there at all.
// Usage: node convex-resend-restart.mjs '{"url": <query service>, "site": <gateway>}'
// Prints one JSON line per phase and reads the test's steps on stdin:
//   "sent"   20 mutations went out on the client's socket;
//   on "more" (the service is shutting down): 10 more are sent;
//   "done"   how each of the 30 settled, and the channel.
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";
import { phase, step, withTimeout } from "./phases.mjs";
import { signUp, tokens } from "./site.mjs";

const { url, site } = JSON.parse(process.argv[2]);
const settle = (promise) =>
  promise.then(
    (value) => ({ resolved: value }),
    (error) => ({ rejected: String(error?.message ?? error) }),
  );

const fetchToken = tokens(site, await signUp(site, "ada.restart@example.com", "ada"));

const client = new ConvexClient(url, { webSocketConstructor: WebSocket });
try {
  await withTimeout(
    new Promise((resolve) => client.setAuth(fetchToken, (signedIn) => signedIn && resolve())),
    "signing in",
  );
  const channel = "restart";
  const send = (body) => settle(client.mutation(api.messages.send, { channel, body }));
  const sent = [];
  for (let i = 0; i < 20; i++) sent.push(send(`m${i}`));
  phase("sent", {});
  await step("more");
  for (let i = 20; i < 30; i++) sent.push(send(`m${i}`));
  const outcomes = await withTimeout(Promise.all(sent), "the 30 mutations to settle");
  const list = await withTimeout(client.query(api.messages.list, { channel }), "reading the channel");
  phase("done", { outcomes, channel: list.map((m) => m.body) });
} catch (error) {
  phase("failed", { error: String(error?.stack ?? error) });
}
await client.close();
process.exit(0);
