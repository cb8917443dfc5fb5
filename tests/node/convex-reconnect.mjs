// The official `convex` client reconnecting through convex-edge's query service. Usage:
//   node convex-reconnect.mjs '{"url": <query service>, "site": <gateway>, "drops": 3}'
// A signed-out client subscribes to a list while a second signed-out client keeps the same
// query on the shared upstream, then the first client's TCP socket is dropped `drops` times;
// a third, signed-in client writes to the list so each new socket is seen to be live. convex-js rebuilds its results from scratch after a reconnect, so
// every poll (each 1 ms) of a query that had a value must still see one: the transition that
// reaches the re-added query set carries the results. Prints one JSON line.
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";
import { until } from "./until.mjs";

const { url, site, drops = 3 } = JSON.parse(process.argv[2]);
const out = { polls: 0, undefinedPolls: 0, reconnects: 0 };

async function signUp(email) {
  const response = await fetch(`${site}/api/auth/sign-up/email`, {
    method: "POST",
    headers: { "content-type": "application/json", origin: site },
    body: JSON.stringify({ name: "Reconnect User", email, password: "correct horse battery staple" }),
  });
  if (!response.ok) throw new Error(`sign-up ${response.status}`);
  return response.headers.get("set-cookie").split(";")[0];
}

const sockets = [];
class TrackedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    sockets.push(this);
  }
}

const cookie = await signUp("reconnect@example.com");
async function fetchToken() {
  const response = await fetch(`${site}/api/auth/convex/token`, { headers: { cookie } });
  return (await response.json()).token;
}

const channel = "reconnect";
const client = new ConvexClient(url, { webSocketConstructor: TrackedWebSocket });
const other = new ConvexClient(url, { webSocketConstructor: WebSocket });
const writer = new ConvexClient(url, { webSocketConstructor: WebSocket });
let poller;
try {
  writer.setAuth(fetchToken);
  let mine = [];
  client.onUpdate(api.messages.list, { channel }, (m) => (mine = m.map((x) => x.body)));
  other.onUpdate(api.messages.list, { channel }, () => {});
  await writer.mutation(api.messages.send, { channel, body: "first" });
  await until(() => mine.includes("first"), "the first message");

  // From here on both queries have values: none may read as loading again.
  poller = setInterval(() => {
    out.polls += 1;
    const list = client.client.localQueryResult("messages:list", { channel });
    if (list === undefined) out.undefinedPolls += 1;
  }, 1);
  for (let i = 0; i < drops; i++) {
    const before = sockets.length;
    sockets.at(-1)._socket.destroy();
    await until(() => sockets.length > before && sockets.at(-1).readyState === WebSocket.OPEN, "a new socket", 30_000);
    out.reconnects += 1;
    // The new socket's subscriptions are live once a new message shows on it.
    const body = `after drop ${i}`;
    await writer.mutation(api.messages.send, { channel, body });
    await until(() => mine.includes(body), body, 30_000);
  }
  out.ok = true;
} catch (error) {
  out.ok = false;
  out.error = String(error?.stack ?? error);
} finally {
  clearInterval(poller);
}
console.log(JSON.stringify(out));
await client.close();
await other.close();
await writer.close();
process.exit(0);
