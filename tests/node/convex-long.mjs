// The official `convex` client held open through convex-edge's query service for minutes.
// Usage: node convex-long.mjs '{"url": <query service>, "site": <gateway>, "mode": "idle"|"refresh", "seconds": n}'
//   idle: one subscription, then nothing for `seconds`: the client must keep its one socket
//         (the service's Pings keep its server-inactivity timer from firing).
//   refresh: signs up with the Better Auth client and takes its tokens from the gateway's
//         `/api/auth/convex/token` as an app does (a forced refresh sends
//         `Cache-Control: no-cache`), then stays signed in for `seconds`: every Authenticate
//         the client sends is recorded with the token's iat/exp, and `users:me` must never
//         lose the identity.
// Prints one JSON line with what it saw.
import { createAuthClient } from "better-auth/client";
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";
import { until } from "./until.mjs";

const { url, site, mode, seconds } = JSON.parse(process.argv[2]);
const out = { mode, sockets: 0, closes: 0, pings: 0, authErrors: [], transitionsWithoutClocks: 0, authenticates: [] };

const claims = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());

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
    const send = this.send.bind(this);
    this.send = (data) => {
      const message = JSON.parse(String(data));
      if (message.type === "Authenticate" && message.tokenType === "User") {
        const { iat, exp, jti } = claims(message.value);
        out.authenticates.push({ at: Date.now(), iat, exp, jti: jti ?? null, socket: out.sockets });
      }
      send(data);
    };
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
  } else if (mode === "refresh") {
    // One cookie jar, as a browser keeps one.
    let cookie = "";
    const jarFetch = async (input, init = {}) => {
      const headers = new Headers(init.headers ?? {});
      if (cookie) headers.set("cookie", cookie);
      headers.set("origin", site);
      const response = await fetch(input, { ...init, headers });
      for (const line of response.headers.getSetCookie()) {
        if (line.startsWith("better-auth.session_token=")) cookie = line.split(";")[0];
      }
      return response;
    };
    const auth = createAuthClient({ baseURL: site, fetchOptions: { customFetchImpl: jarFetch } });
    const signedUp = await auth.signUp.email({ name: "Long Lived", email: "long@example.com", password: "correct horse battery staple" });
    if (signedUp.error) throw new Error(`sign-up: ${JSON.stringify(signedUp.error)}`);
    out.fetches = [];
    client.setAuth(async ({ forceRefreshToken }) => {
      const { data, error } = await auth.$fetch("/convex/token", {
        method: "GET",
        headers: forceRefreshToken ? { "cache-control": "no-cache" } : {},
      });
      if (error) throw new Error(`token: ${JSON.stringify(error)}`);
      out.fetches.push({ at: Date.now(), forced: forceRefreshToken });
      return data.token;
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
    out.meAtEnd = me;
    out.end = Date.now();
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
