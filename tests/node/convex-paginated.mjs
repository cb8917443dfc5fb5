// A paginated query with the official `convex` client (its non-React paginated API,
// `onPaginatedUpdate_experimental`) through convex-edge's query service. Usage:
//   node convex-paginated.mjs '{"url": <query service>, "site": <gateway>, "channel": <name>}'
// Posts five messages, loads two pages of two (newest first), posts a sixth (it lands in the
// first page, which must keep its end), then drops the socket: the client re-subscribes with
// the journals it was sent, and a seventh message must still leave every page's bounds alone.
// Prints one JSON line with what it saw, the sync messages' journals included.
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";
import { until } from "./until.mjs";

const { url, site, channel } = JSON.parse(process.argv[2]);
const out = { sockets: 0, adds: [], updates: [] };
let socket;

// Records the page queries the client adds (with the journal it sends) and the results it is
// sent (with their journals).
class WatchedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    out.sockets += 1;
    socket = this;
    const pages = new Map();
    this.addEventListener("message", (event) => {
      const message = JSON.parse(String(event.data));
      if (message.type !== "Transition") return;
      for (const m of message.modifications) {
        if (m.type === "QueryUpdated" && pages.has(m.queryId)) {
          out.updates.push({
            socket: out.sockets,
            cursor: pages.get(m.queryId),
            journal: m.journal,
            bodies: m.value.page.map((d) => d.body),
            continueCursor: m.value.continueCursor,
            isDone: m.value.isDone,
          });
        }
      }
    });
    const send = this.send.bind(this);
    this.send = (data) => {
      const message = JSON.parse(String(data));
      if (message.type === "ModifyQuerySet") {
        for (const m of message.modifications) {
          if (m.type === "Add" && m.udfPath === "messages:page") {
            const { cursor, endCursor } = m.args[0].paginationOpts;
            pages.set(m.queryId, cursor);
            out.adds.push({ socket: out.sockets, cursor, endCursor, journal: m.journal ?? null });
          }
        }
      }
      send(data);
    };
  }
}

async function signUp(email) {
  const response = await fetch(`${site}/api/auth/sign-up/email`, {
    method: "POST",
    headers: { "content-type": "application/json", origin: site },
    body: JSON.stringify({ name: "Pager", email, password: "correct horse battery staple" }),
  });
  if (!response.ok) throw new Error(`sign-up ${response.status}`);
  return response.headers.get("set-cookie").split(";")[0];
}

const client = new ConvexClient(url, { webSocketConstructor: WatchedWebSocket });
try {
  const cookie = await signUp(`pager-${channel}@example.com`);
  client.setAuth(async () => {
    const response = await fetch(`${site}/api/auth/convex/token`, { headers: { cookie } });
    return (await response.json()).token;
  });
  for (let i = 1; i <= 5; i++) {
    await client.mutation(api.messages.send, { channel, body: `m${i}` });
  }
  let view;
  client.onPaginatedUpdate_experimental(api.messages.page, { channel }, { initialNumItems: 2 }, (r) => (view = r));
  const bodies = () => view.results.map((d) => d.body).join(",");
  await until(() => view?.status === "CanLoadMore", "the first page");
  out.firstPage = bodies();
  out.loadMore = view.loadMore(2);
  await until(() => view.status === "CanLoadMore" && view.results.length === 4, "the second page");
  out.twoPages = bodies();

  await client.mutation(api.messages.send, { channel, body: "m6" });
  await until(() => view.results.length === 5, "m6 in the loaded pages");
  out.afterInsert = bodies();
  out.statusAfterInsert = view.status;

  // The client re-subscribes on a new socket with the journals it holds.
  const before = out.sockets;
  socket.close();
  await until(() => out.sockets > before && out.adds.some((a) => a.socket > before), "the re-subscription");
  await client.mutation(api.messages.send, { channel, body: "m7" });
  await until(() => view.results.length === 6, "m7 in the loaded pages");
  await until(
    () => out.updates.some((u) => u.socket > before && u.bodies.includes("m7")),
    "m7 on the new socket",
  );
  out.afterReconnect = bodies();
  out.ok = true;
} catch (error) {
  out.ok = false;
  out.error = String(error?.stack ?? error);
}
console.log(JSON.stringify(out));
await client.close();
process.exit(0);
