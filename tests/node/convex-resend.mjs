// The official `convex` client sends again, on each new socket, every mutation still in flight
// (and every one answered whose transition it has not seen): Convex runs each once per
// `(sessionId, requestId)`. Through convex-edge's query service each must still run once.
// Usage: node convex-resend.mjs '{"url": <query service>, "site": <gateway>}'
// Prints one JSON line per phase and reads the test's steps on stdin:
//   "switched"   20 mutations sent as ada, then `setAuth` to a token the proxy refuses (its
//                socket ends with `AuthError` while they are in flight; the client goes on
//                signed out and sends them again): how each promise settled, and the channel;
//   "ready"      a second client, signed in as ada, whose list shows its first message;
//   on "go":
//   "sent"       a mutation went out on the client's socket;
//   on "cut" (the query service's connection to Convex swallows traffic, so the answer is lost):
//   "dropped"    the client's own socket was torn down (no close handshake), and the client
//                reconnects and sends the mutation again;
//   on "healed":
//   "done"       the mutation settled, and the channel;
//   "ready"      a third client, signed in as bea;
//   on "go":
//   "sent"       a mutation went out;
//   on "cut":
//   "signed-out" bea signed out (auth revokes her session; the client's socket gets
//                `AuthError`, it goes on signed out and sends the mutation again);
//   on "healed":
//   "done"       the mutation settled, and the channel.
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";
import { phase, step, withTimeout } from "./phases.mjs";
import { signIn as signInAgain, signUp, tokens } from "./site.mjs";
import { until } from "./until.mjs";

const { url, site } = JSON.parse(process.argv[2]);
const settle = (promise) =>
  promise.then(
    (value) => ({ resolved: value }),
    (error) => ({ rejected: String(error?.message ?? error) }),
  );

// Every socket the client opens, so the test can tear the current one down.
const sockets = [];
class TrackedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    sockets.push(this);
  }
}

// Resolves once the client's auth is confirmed by the server; `signedOut` once it is dropped.
function signIn(client, fetchToken, signedOut = () => {}) {
  return new Promise((resolve) =>
    client.setAuth(fetchToken, (signedIn) => (signedIn ? resolve() : signedOut())),
  );
}

async function channelOf(channel, fetchToken) {
  const reader = new ConvexClient(url, { webSocketConstructor: WebSocket });
  await signIn(reader, fetchToken);
  const list = await withTimeout(reader.query(api.messages.list, { channel }), "reading the channel");
  await reader.close();
  return list.map((m) => ({ body: m.body, author: m.author }));
}

const clients = [];
try {
  const ada = tokens(site, await signUp(site, "ada.resend@example.com", "ada"));

  // 1. In flight while the socket's token is replaced by one the proxy refuses.
  const first = new ConvexClient(url, { webSocketConstructor: WebSocket });
  clients.push(first);
  await withTimeout(signIn(first, ada), "signing in");
  const switchChannel = "resend-switch";
  const sent = [];
  for (let i = 0; i < 20; i++) {
    sent.push(settle(first.mutation(api.messages.send, { channel: switchChannel, body: `m${i}` })));
  }
  first.setAuth(async () => "not.a.valid-token");
  const outcomes = await withTimeout(Promise.all(sent), "the 20 mutations to settle");
  phase("switched", { outcomes, channel: await channelOf(switchChannel, ada) });

  // 2. In flight while the client's socket and the answer are both lost.
  const second = new ConvexClient(url, { webSocketConstructor: TrackedWebSocket });
  clients.push(second);
  await withTimeout(signIn(second, ada), "signing in");
  const dropChannel = "resend-drop";
  let mine = [];
  second.onUpdate(api.messages.list, { channel: dropChannel }, (m) => (mine = m.map((x) => x.body)));
  await withTimeout(second.mutation(api.messages.send, { channel: dropChannel, body: "first" }), "the first mutation");
  await until(() => mine.includes("first"), "the first message");
  phase("ready", {});

  await step("go");
  let settledEarly = false;
  const once = settle(second.mutation(api.messages.send, { channel: dropChannel, body: "once" })).then(
    (outcome) => ((settledEarly = true), outcome),
  );
  phase("sent", {});
  await step("cut");
  // Not answered yet: the answer is what the partition swallowed.
  const answeredBeforeDrop = settledEarly;
  const before = sockets.length;
  sockets.at(-1).terminate();
  await until(() => sockets.length > before, "the client to reconnect");
  phase("dropped", { answeredBeforeDrop });
  await step("healed");
  const outcome = await withTimeout(once, "the mutation to settle");
  phase("done", { outcome, channel: await channelOf(dropChannel, ada) });

  // 3. In flight while its user signs out (auth revokes the token the upstream holds).
  const beaCookie = await signUp(site, "bea.resend@example.com", "bea");
  const bea = tokens(site, beaCookie);
  const third = new ConvexClient(url, { webSocketConstructor: WebSocket });
  clients.push(third);
  let signedOut = false;
  await withTimeout(
    signIn(third, bea, () => (signedOut = true)),
    "signing in",
  );
  const revokeChannel = "resend-revoke";
  await withTimeout(third.mutation(api.messages.send, { channel: revokeChannel, body: "first" }), "the first mutation");
  phase("ready", {});
  await step("go");
  const beforeSignOut = settle(third.mutation(api.messages.send, { channel: revokeChannel, body: "once" }));
  phase("sent", {});
  await step("cut");
  const response = await fetch(`${site}/api/auth/sign-out`, {
    method: "POST",
    headers: { cookie: beaCookie, origin: site, "content-type": "application/json" },
    body: "{}",
  });
  if (!response.ok) throw new Error(`sign-out ${response.status}`);
  await until(() => signedOut, "the client to drop its auth");
  phase("signed-out", {});
  await step("healed");
  const revoked = await withTimeout(beforeSignOut, "the mutation to settle");
  const beaAgain = tokens(site, await signInAgain(site, "bea.resend@example.com"));
  phase("done", { outcome: revoked, channel: await channelOf(revokeChannel, beaAgain) });
} catch (error) {
  phase("failed", { error: String(error?.stack ?? error) });
}
await Promise.all(clients.map((c) => c.close()));
process.exit(0);
