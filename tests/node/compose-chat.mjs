// The compose topology's user journey, run by scripts/compose-netns.sh from a client network
// namespace: sign up through the load balancer (nginx → gateways), get a Convex token there,
// then chat live through the query service with the official `convex` client: an anonymous
// watcher sees a signed-in user's message arrive. Usage:
//   node compose-chat.mjs '{"site": "http://lb:8080", "convex": "http://query:3210"}'
// Prints one JSON line (the cookie for the load generator included); exits non-zero on any
// failure. Every wait is bounded.
import { ConvexClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import WebSocket from "ws";

const { site, convex } = JSON.parse(process.argv[2]);
const deadline = (ms, what) =>
  new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms).unref());

async function main() {
  const email = `compose-${Date.now()}@example.com`;
  const signUp = await fetch(`${site}/api/auth/sign-up/email`, {
    method: "POST",
    // Node's fetch sends `Sec-Fetch-Mode: cors`, so the origin is checked, as a browser's is.
    headers: { "content-type": "application/json", origin: site },
    body: JSON.stringify({ name: "Compose", email, password: "correct horse battery staple" }),
  });
  if (signUp.status !== 200) throw new Error(`sign-up: ${signUp.status} ${await signUp.text()}`);
  const cookie = signUp.headers
    .getSetCookie()
    .map((c) => c.split(";")[0])
    .find((c) => c.includes("session_token"));
  if (!cookie) throw new Error("sign-up set no session cookie");
  const session = await (await fetch(`${site}/api/auth/get-session`, { headers: { cookie } })).json();
  if (session?.user?.email !== email) throw new Error(`get-session: ${JSON.stringify(session)}`);
  const tokenResponse = await fetch(`${site}/api/auth/convex/token`, { headers: { cookie } });
  const { token } = await tokenResponse.json();
  if (!token) throw new Error(`convex/token: ${tokenResponse.status}`);

  const watcher = new ConvexClient(convex, { webSocketConstructor: WebSocket });
  const sender = new ConvexClient(convex, { webSocketConstructor: WebSocket });
  const body = `hello from ${email}`;
  const seen = new Promise((resolve) =>
    watcher.onUpdate(api.messages.list, { channel: "general" }, (messages) => {
      if (messages.some((m) => m.body === body)) resolve(messages.find((m) => m.body === body));
    }),
  );
  sender.setAuth(async () => token);
  const me = await Promise.race([
    new Promise((resolve) => sender.onUpdate(api.users.me, {}, (v) => v?.email && resolve(v))),
    deadline(20_000, "users:me with the token (does Convex trust the issuer?)"),
  ]);
  await Promise.race([
    sender.mutation(api.messages.send, { channel: "general", body }),
    deadline(20_000, "messages:send"),
  ]);
  const message = await Promise.race([seen, deadline(20_000, "the watcher to see the message")]);
  await watcher.close();
  await sender.close();
  console.log(JSON.stringify({ email, cookie, me: me.email, issuer: me.issuer, seenAuthor: message.author, seenBody: message.body }));
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(String(e?.stack ?? e));
    process.exit(1);
  },
);
