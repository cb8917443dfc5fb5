// The official `convex` client held open through convex-edge's query service for minutes.
// Usage: node convex-long.mjs '{"url": <query service>, "site": <gateway>, "mode": "idle"|"refresh", "seconds": n}'
//   idle:    one subscription, then nothing for `seconds`: the client must keep its one socket
//            (the service's Pings keep its server-inactivity timer from firing).
//   refresh: signed in through the gateway's /api/auth/convex/token for `seconds`, while another
//            caller (a page render, say) takes tokens for the same session every 3 s, so the
//            gateway's cache holds one; the client must refresh before each token expires and
//            never be told AuthError.
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

const claims = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
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
    const email = `long${Date.now()}@example.com`;
    const response = await fetch(`${site}/api/auth/sign-up/email`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "Long User", email, password: "correct horse battery staple" }),
    });
    if (!response.ok) throw new Error(`sign-up ${response.status}`);
    const cookie = response.headers.get("set-cookie").split(";")[0];
    const token = async () => (await (await fetch(`${site}/api/auth/convex/token`, { headers: { cookie } })).json()).token;
    // Another user of the session keeps the gateway's cache warm.
    let running = true;
    const pages = (async () => {
      while (running) {
        await token();
        await sleep(3000);
      }
    })();
    out.fetches = [];
    client.setAuth(async () => {
      const jwt = await token();
      const { iat, exp } = claims(jwt);
      out.fetches.push({ at: Date.now(), iat, exp });
      return jwt;
    });
    let me;
    out.meLost = 0;
    client.onUpdate(api.users.me, {}, (v) => {
      if (me && !v) out.meLost += 1;
      me = v?.email;
    });
    await until(() => me, "users:me");
    out.me = me;
    await sleep(seconds * 1000);
    running = false;
    await pages;
    out.meAtEnd = me;
    out.ok = true;
  }
} catch (error) {
  out.ok = false;
  out.error = String(error?.stack ?? error);
}
console.log(JSON.stringify(out));
await client.close();
process.exit(0);
