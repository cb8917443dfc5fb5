// The official `convex` client's mutations and actions while the query service's connection to
// Convex is lost and made again (the client's own socket to the query service stays up). Usage:
//   node convex-requests-reconnect.mjs '{"url": <query service>, "site": <gateway>}'
// Prints one JSON line per phase and reads the test's steps on stdin:
//   "ready"         its list shows a first message (the upstream was just heard from);
//   on "partitioned" it calls an action, which the query service forwards into the partition:
//   "action"        the action settled (convex-js fails one in flight on a lost connection);
//                   then it sends a mutation while the upstream is down;
//   "mutation-sent" the mutation went out on the client's socket;
//   on "healed":
//   "done"          the mutation resolved, and whether the list showed its write by then.
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";
import { phase, step, withTimeout } from "./phases.mjs";
import { signUp, tokens } from "./site.mjs";
import { until } from "./until.mjs";

const { url, site } = JSON.parse(process.argv[2]);

const fetchToken = tokens(site, await signUp(site, "requests@example.com", "Requests User"));

const channel = "requests";
const client = new ConvexClient(url, { webSocketConstructor: WebSocket });
let mine = [];
try {
  client.setAuth(fetchToken);
  client.onUpdate(api.messages.list, { channel }, (m) => (mine = m.map((x) => x.body)));
  await withTimeout(client.mutation(api.messages.send, { channel, body: "first" }), "the first mutation");
  await until(() => mine.includes("first"), "the first message");
  phase("ready", { ok: true });

  await step("partitioned");
  const action = await withTimeout(
    client.action(api.demo.echo, { n: 1 }).then(
      (value) => ({ resolved: value }),
      (error) => ({ rejected: String(error?.message ?? error) }),
    ),
    "the action to settle",
  );
  phase("action", action);

  const body = "sent while the upstream was down";
  let seenAtResolve = null;
  const mutation = client.mutation(api.messages.send, { channel, body }).then(
    () => {
      seenAtResolve = mine.includes(body);
      return { resolved: true };
    },
    (error) => ({ rejected: String(error?.message ?? error) }),
  );
  phase("mutation-sent", {});

  await step("healed");
  const settled = await withTimeout(mutation, "the mutation to settle");
  phase("done", { ...settled, seenAtResolve, list: mine });
} catch (error) {
  phase("failed", { ok: false, error: String(error?.stack ?? error) });
}
await client.close();
process.exit(0);
