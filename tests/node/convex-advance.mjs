// The official `convex` client's mutations through convex-edge's query service when an upstream
// the socket uses is idle: Convex (and devconvex) sends a connection a transition only when its
// query set, identity or results change, or after its own request, while convex-js resolves a
// mutation only once a transition reaches the mutation's `ts`.
// Usage: node convex-advance.mjs '{"url": <query service>, "site": <gateway>}'
// Prints one JSON line with a "phase" of "done": for each case, whether the mutation's promise
// resolved (`false`: not within 15 s).
//   idleShared: signed in, with a shared query (`config:get`, the anonymous upstream) no commit
//     touches, a mutation's `ts` is beyond the shared route's.
//   switchUser: a mutation in flight while the client's identity changes to another user whose
//     upstream is already open and idle.
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";
import { signUp, tokens } from "./site.mjs";
import { until } from "./until.mjs";

const { url, site } = JSON.parse(process.argv[2]);
const out = { phase: "done" };

// Whether `promise` resolves within `ms` (a deadline so a hang is reported, not a speed check).
function settles(promise, ms = 15_000) {
  return Promise.race([
    promise.then(() => true),
    new Promise((resolve) => setTimeout(() => resolve(false), ms)),
  ]);
}

const clients = [];
function open() {
  const client = new ConvexClient(url, { webSocketConstructor: WebSocket });
  clients.push(client);
  return client;
}

try {
  const ada = await signUp(site, "ada.advance@example.com", "Advance");
  const bob = await signUp(site, "bob.advance@example.com", "Advance");

  // Bob's upstream and the anonymous one hold `users:me` already, so the client's moves to
  // them need no new subscription (and bring no fresh transition): they stay idle.
  // One token for bob's sockets: a fresher one would make his upstream authenticate again,
  // and Convex answers that with a transition at the latest `ts`.
  const bobToken = await tokens(site, bob)();
  const bobClient = open();
  bobClient.setAuth(async () => bobToken);
  let bobMe;
  bobClient.onUpdate(api.users.me, {}, (v) => (bobMe = v?.email));
  const anonClient = open();
  let anonMe;
  anonClient.onUpdate(api.users.me, {}, (v) => (anonMe = v));
  await until(() => bobMe === "bob.advance@example.com", "bob's users:me");
  await until(() => anonMe === null, "the anonymous users:me");

  // Signed in, with a shared query on the idle anonymous upstream.
  const shared = open();
  shared.setAuth(tokens(site, ada));
  let sharedMe;
  let config;
  shared.onUpdate(api.users.me, {}, (v) => (sharedMe = v?.email));
  shared.onUpdate(api.config.get, {}, (v) => (config = v));
  await until(() => sharedMe === "ada.advance@example.com" && config, "ada's queries");
  out.idleShared = await settles(shared.mutation(api.tasks.add, { text: "idle shared" }));

  // The test delays every upstream frame, so the identity changes before Convex's answer
  // reaches the proxy: the upstream the socket left answers.
  const switching = open();
  switching.setAuth(tokens(site, ada));
  let me;
  switching.onUpdate(api.users.me, {}, (v) => (me = v?.email ?? null));
  await until(() => me === "ada.advance@example.com", "users:me as ada");
  const asAda = switching.mutation(api.tasks.add, { text: "switching" });
  switching.setAuth(async () => bobToken);
  out.switchUser = await settles(asAda);
  await until(() => me === "bob.advance@example.com", "users:me as bob");

  out.ok = true;
} catch (error) {
  out.ok = false;
  out.error = String(error?.stack ?? error);
}
console.log(JSON.stringify(out));
await Promise.all(clients.map((c) => c.close()));
process.exit(0);
