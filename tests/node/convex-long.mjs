// The official `convex` client held open through convex-edge's query service for minutes.
// Usage: node convex-long.mjs '{"url": <query service>, "site": <gateway>, "mode": "idle", "seconds": n}'
//   idle: one subscription, then nothing for `seconds`: the client must keep its one socket
//         (the service's Pings keep its server-inactivity timer from firing).
// Prints one JSON line with what it saw.
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";
import { until } from "./until.mjs";

const { url, site, mode, seconds } = JSON.parse(process.argv[2]);
const out = { mode, sockets: 0, closes: 0, pings: 0, authErrors: [], transitionsWithoutClocks: 0 };

class WatchedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    out.sockets += 1;
    this.addEventListener("close", () => (out.closes += 1));
    this.addEventListener("message", (event) => {
      const message = JSON.parse(String(event.data));
      if (message.type === "Ping") out.pings += 1;
      if (message.type === "AuthError") out.authErrors.push(message);
      if (message.type === "Transition" && (message.clientClockSkew === undefined || message.serverTs === undefined)) {
        out.transitionsWithoutClocks += 1;
      }
    });
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const client = new ConvexClient(url, { webSocketConstructor: WatchedWebSocket });
try {
  if (mode === "idle") {
    let messages;
    client.onUpdate(api.messages.list, { channel: "idle" }, (m) => (messages = m));
    await until(() => messages, "the first result");
    await sleep(seconds * 1000);
    out.ok = true;
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} catch (error) {
  out.ok = false;
  out.error = String(error?.stack ?? error);
}
console.log(JSON.stringify(out));
await client.close();
process.exit(0);
