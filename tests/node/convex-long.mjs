// The official `convex` client held open through convex-edge's query service for minutes.
// Usage: node convex-long.mjs '{"url": <query service>, "site": <gateway>, "mode": "idle"|"refresh", "seconds": n}'
//   idle: one subscription, then nothing for `seconds`: the client must keep its one socket
//         (the service's Pings keep its server-inactivity timer from firing).
//   refresh: signs up with the Better Auth client, then two tabs of one browser (one cookie
//         jar that keeps every cookie, as a browser does) take their tokens from the gateway's
//         `/api/auth/convex/token` for `seconds`:
//           - "flagged": a forced refresh sends `Cache-Control: no-cache`;
//           - "plain": `fetchToken` ignores `forceRefreshToken`, as the simplest app's does.
//         Every Authenticate each tab sends is recorded with the token's iat/exp, and
//         `users:me` must never lose the identity.
// Prints one JSON line with what it saw (per tab under `tabs` in refresh mode).
import { createAuthClient } from "better-auth/client";
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";
import { until } from "./until.mjs";

const { url, site, mode, seconds } = JSON.parse(process.argv[2]);
const out = { mode };

const claims = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());

/// What one client saw on its sockets, and the WebSocket class that records it.
function watched() {
  const seen = { sockets: 0, closes: 0, pings: 0, authErrors: [], transitionsWithoutClocks: 0, authenticates: [] };
  class WatchedWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      seen.sockets += 1;
      this.addEventListener("close", () => (seen.closes += 1));
      this.addEventListener("message", (event) => {
        const message = JSON.parse(String(event.data));
        if (message.type === "Ping") seen.pings += 1;
        if (message.type === "AuthError") seen.authErrors.push(message);
        if (message.type === "Transition" && (message.clientClockSkew === undefined || message.serverTs === undefined)) {
          seen.transitionsWithoutClocks += 1;
        }
      });
      const send = this.send.bind(this);
      this.send = (data) => {
        const message = JSON.parse(String(data));
        if (message.type === "Authenticate" && message.tokenType === "User") {
          const { iat, exp, jti } = claims(message.value);
          seen.authenticates.push({ at: Date.now(), iat, exp, jti: jti ?? null, socket: seen.sockets });
        }
        send(data);
      };
    }
  }
  return { seen, WatchedWebSocket };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const clients = [];
try {
  if (mode === "idle") {
    const { seen, WatchedWebSocket } = watched();
    Object.assign(out, seen);
    const client = new ConvexClient(url, { webSocketConstructor: WatchedWebSocket });
    clients.push(client);
    let messages;
    client.onUpdate(api.messages.list, { channel: "idle" }, (m) => (messages = m));
    await until(() => messages, "the first result");
    await sleep(seconds * 1000);
    Object.assign(out, seen);
    out.ok = true;
  } else if (mode === "refresh") {
    // One cookie jar, as a browser keeps one: every cookie set, each replaced by name and
    // dropped when it expires or is cleared.
    const jar = new Map();
    const jarFetch = async (input, init = {}) => {
      const headers = new Headers(init.headers ?? {});
      const now = Date.now();
      const live = [...jar].filter(([, c]) => c.until > now).map(([name, c]) => `${name}=${c.value}`);
      if (live.length) headers.set("cookie", live.join("; "));
      headers.set("origin", site);
      const response = await fetch(input, { ...init, headers });
      for (const line of response.headers.getSetCookie()) {
        const [pair, ...attributes] = line.split(";").map((s) => s.trim());
        const at = pair.indexOf("=");
        const name = pair.slice(0, at);
        const value = pair.slice(at + 1);
        const maxAge = attributes.find((a) => a.toLowerCase().startsWith("max-age="));
        const until = maxAge ? now + Number(maxAge.split("=")[1]) * 1000 : Infinity;
        if (!value || until <= now) jar.delete(name);
        else jar.set(name, { value, until });
      }
      return response;
    };
    const auth = createAuthClient({ baseURL: site, fetchOptions: { customFetchImpl: jarFetch } });
    const signedUp = await auth.signUp.email({ name: "Long Lived", email: "long@example.com", password: "correct horse battery staple" });
    if (signedUp.error) throw new Error(`sign-up: ${JSON.stringify(signedUp.error)}`);
    out.tabs = {};
    const tab = async (name, flagForced) => {
      const { seen, WatchedWebSocket } = watched();
      const result = { ...seen, fetches: [], meLost: 0 };
      out.tabs[name] = result;
      const client = new ConvexClient(url, { webSocketConstructor: WatchedWebSocket });
      clients.push(client);
      client.setAuth(async ({ forceRefreshToken }) => {
        const { data, error } = await auth.$fetch("/convex/token", {
          method: "GET",
          headers: flagForced && forceRefreshToken ? { "cache-control": "no-cache" } : {},
        });
        if (error) throw new Error(`token: ${JSON.stringify(error)}`);
        result.fetches.push({ at: Date.now(), forced: forceRefreshToken });
        return data.token;
      });
      let me;
      client.onUpdate(api.users.me, {}, (v) => {
        if (me && !v) result.meLost += 1;
        me = v?.email;
      });
      await until(() => me, `users:me in the ${name} tab`);
      result.me = me;
      return { finish: () => Object.assign(result, seen, { meAtEnd: me, end: Date.now() }) };
    };
    const tabs = await Promise.all([tab("flagged", true), tab("plain", false)]);
    await sleep(seconds * 1000);
    for (const t of tabs) t.finish();
    out.ok = true;
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} catch (error) {
  out.ok = false;
  out.error = String(error?.stack ?? error);
}
console.log(JSON.stringify(out));
await Promise.all(clients.map((c) => c.close()));
process.exit(0);
