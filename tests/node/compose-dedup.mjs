// What dedup becomes with several query replicas, measured by scripts/compose-netns.sh:
// N anonymous `convex` clients watch messages:list, first all on one replica, then spread
// round-robin over two, and Convex's (devconvex's) live subscription gauge is read each time,
// with each replica's upstream gauge. Usage:
//   node compose-dedup.mjs '{"clients": 200, "replicas": [url, url], "convexMetrics": url}'
// Prints one JSON line {phases: [{clients, replicas, upstream, perReplica}]}.
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";

const { clients, replicas, convexMetrics } = JSON.parse(process.argv[2]);

const gauge = async (url, name) => {
  const text = await (await fetch(url)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(" ").at(-1)) : 0;
};

const settle = async (read, want, what) => {
  const end = Date.now() + 20_000;
  for (;;) {
    const value = await read();
    if (value === want) return value;
    if (Date.now() > end) throw new Error(`timed out: ${what} is ${value}, expected ${want}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};

async function phase(urls) {
  const open = [];
  const ready = [];
  for (let i = 0; i < clients; i++) {
    const client = new ConvexClient(urls[i % urls.length], { webSocketConstructor: WebSocket });
    open.push(client);
    ready.push(new Promise((resolve) => client.onUpdate(api.messages.list, { channel: "dedup" }, resolve)));
  }
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error("timed out: first results")), 30_000).unref());
  await Promise.race([Promise.all(ready), timeout]);
  const upstream = await settle(() => gauge(convexMetrics, "devconvex_subscriptions"), urls.length, "devconvex_subscriptions");
  const perReplica = await Promise.all(urls.map((u) => gauge(`${u}/metrics`, "edge_query_upstream_subscriptions")));
  await Promise.all(open.map((c) => c.close()));
  await settle(() => gauge(convexMetrics, "devconvex_subscriptions"), 0, "devconvex_subscriptions after close");
  return { clients, replicas: urls.length, upstream, perReplica };
}

const phases = [await phase(replicas.slice(0, 1)), await phase(replicas)];
console.log(JSON.stringify({ phases }));
process.exit(0);
