// The official `convex` npm client (ConvexClient over WebSocket, ConvexHttpClient over HTTP)
// against a Convex-compatible origin. Usage:
//   node convex-client.mjs '{"url", "token", "otherToken"}'
// Runs the scenarios below and prints one JSON line of what each observed; the Rust test
// asserts on it. Every wait is bounded so a broken server fails the run instead of hanging.
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import WebSocket from "ws";

const { url, token, otherToken } = JSON.parse(process.argv[2]);
const api = anyApi;
const out = {};

function until(predicate, what, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      const value = predicate();
      if (value) return resolve(value);
      if (Date.now() - started > ms) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 10);
    };
    tick();
  });
}

const client = (options = {}) => new ConvexClient(url, { webSocketConstructor: WebSocket, ...options });

async function http() {
  const h = new ConvexHttpClient(url);
  out.httpConfig = await h.query(api.config.get, {});
  const echoArgs = { big: 9007199254740993n, neg: -5n, bytes: new Uint8Array([0, 1, 254, 255]).buffer, text: "hi", nested: { list: [1.5, null, true] } };
  const echoed = await h.action(api.demo.echo, echoArgs);
  out.httpEchoInt64 = echoed.big === 9007199254740993n && echoed.neg === -5n;
  out.httpEchoBytes = Array.from(new Uint8Array(echoed.bytes));
  out.httpEchoNested = echoed.nested;
  try {
    await h.mutation(api.messages.send, { channel: "general", body: "anonymous" });
    out.httpAnonymousSend = "accepted";
  } catch (e) {
    out.httpAnonymousSend = String(e.message);
  }
  h.setAuth(token);
  out.httpSendId = await h.mutation(api.messages.send, { channel: "http", body: "over http" });
  out.httpList = (await h.query(api.messages.list, { channel: "http" })).map((m) => m.body);
  out.httpMe = (await h.query(api.users.me, {}))?.email ?? null;
  try {
    await h.query(api.nope.missing, {});
  } catch (e) {
    out.httpMissing = String(e.message);
  }
}

async function live() {
  // A watches the channel anonymously; B signs in and sends.
  const a = client();
  const b = client();
  const seen = [];
  a.onUpdate(api.messages.list, { channel: "general" }, (messages) => seen.push(messages.map((m) => m.body)));
  await until(() => seen.length > 0, "the first result");
  out.initial = seen[0];

  let authChanges = [];
  b.setAuth(async () => token, (isAuthenticated) => authChanges.push(isAuthenticated));
  let me;
  b.onUpdate(api.users.me, {}, (v) => (me = v));
  await until(() => me && me.email, "users:me with the token");
  out.me = me;
  out.authChanges = authChanges;

  const id = await b.mutation(api.messages.send, { channel: "general", body: "hello from B" });
  out.sentId = typeof id === "string";
  await until(() => seen.at(-1)?.includes("hello from B"), "A to see B's message");
  out.seenByA = seen.at(-1);

  // Tasks are private: B's are invisible to an anonymous client and to another user.
  const taskId = await b.mutation(api.tasks.add, { text: "write tests" });
  await b.mutation(api.tasks.toggle, { id: taskId });
  out.bTasks = await b.query(api.tasks.list, {});
  out.anonTasks = await a.query(api.tasks.list, {});
  if (otherToken) {
    const c = client();
    c.setAuth(async () => otherToken);
    let cTasks;
    c.onUpdate(api.tasks.list, {}, (t) => (cTasks = t));
    let cMe;
    c.onUpdate(api.users.me, {}, (v) => (cMe = v));
    await until(() => cMe, "the other user to sign in");
    out.otherTasks = cTasks;
    await c.close();
  }

  // A failing mutation rejects; an action returns.
  try {
    await a.mutation(api.messages.send, { channel: "general", body: "anonymous" });
    out.anonMutation = "accepted";
  } catch (e) {
    out.anonMutation = String(e.message);
  }
  out.echo = await a.action(api.demo.echo, { n: 42n, s: "x" });
  out.echoInt64 = out.echo.n === 42n;
  delete out.echo;

  // A bad token takes the client's auth-error path: onChange(false).
  const d = client();
  const dChanges = [];
  d.setAuth(async () => "not.a.jwt", (ok) => dChanges.push(ok));
  await until(() => dChanges.includes(false), "the auth error");
  out.badTokenChanges = dChanges;

  await Promise.all([a.close(), b.close(), d.close()]);
}

try {
  await http();
  await live();
  out.ok = true;
} catch (error) {
  out.ok = false;
  out.error = String(error?.stack ?? error);
}
console.log(JSON.stringify(out, (_, v) => (typeof v === "bigint" ? v.toString() : v)));
process.exit(0);
