// The benchmark's peer: the real better-auth with Postgres and its jwt plugin, served by
// node:http. Usage: node bench-peer.mjs '{"databaseUrl", "secret", "alg", "sessions"}'
// Prints one JSON line {port, cookies} once ready; GET /__bench/queries returns the number of
// SQL queries sent to Postgres so far. Runs until killed.
import http from "node:http";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { jwt } from "better-auth/plugins";
import pg from "pg";

const { databaseUrl, secret, alg, sessions } = JSON.parse(process.argv[2]);

let queries = 0;
const originalQuery = pg.Client.prototype.query;
pg.Client.prototype.query = function countedQuery(...args) {
  queries += 1;
  return originalQuery.apply(this, args);
};

const options = {
  database: new pg.Pool({ connectionString: databaseUrl, max: 16 }),
  secret,
  baseURL: "http://localhost:8080",
  emailAndPassword: { enabled: true },
  rateLimit: { enabled: false },
  telemetry: { enabled: false },
  logger: { disabled: true },
  plugins: [
    jwt({
      jwks: { keyPairConfig: alg === "RS256" ? { alg, modulusLength: 2048 } : alg === "ES256" ? { alg } : { alg, crv: "Ed25519" } },
      jwt: { issuer: "http://localhost:8080", audience: "convex", expirationTime: "15m" },
    }),
  ],
};

const { runMigrations } = await getMigrations(options);
await runMigrations();
const auth = betterAuth(options);
const handler = toNodeHandler(auth);
const server = http.createServer((req, res) => {
  if (req.url === "/__bench/queries") {
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ queries }));
    return;
  }
  handler(req, res);
});
server.keepAliveTimeout = 60_000;
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const port = server.address().port;

const email = `bench-${Date.now()}@example.com`;
const password = "correct horse battery staple";
await auth.api.signUpEmail({ body: { email, password, name: "Bench" } });
const cookies = [];
for (let i = 0; i < sessions; i += 1) {
  const { headers } = await auth.api.signInEmail({ body: { email, password }, returnHeaders: true });
  cookies.push(headers.get("set-cookie").match(/better-auth\.session_token=([^;]+)/)[1]);
}
// The first token creates the key pair; the measured run starts after it.
await fetch(`http://127.0.0.1:${port}/api/auth/token`, { headers: { cookie: `better-auth.session_token=${cookies[0]}` } });
console.log(JSON.stringify({ port, cookies }));
