// The real better-auth served over HTTP with its genericOAuth plugin, on the same Postgres
// database as convex-edge: the side-by-side social sign-in tests send a browser through it
// and through the gateway against one OpenID provider.
// Usage: node better-auth-oauth.mjs '<json>' with {databaseUrl, secret, port, providerId,
// clientId, clientSecret, discoveryUrl, scopes?, trustedProviders?}; prints {ready: true} once
// it listens on 127.0.0.1:<port>, then serves until killed.
import http from "node:http";
import { betterAuth } from "better-auth";
import { toNodeHandler } from "better-auth/node";
import { genericOAuth } from "better-auth/plugins/generic-oauth";
import pg from "pg";

const args = JSON.parse(process.argv[2] ?? "{}");
const pool = new pg.Pool({ connectionString: args.databaseUrl, max: 4 });
const baseURL = `http://127.0.0.1:${args.port}`;

const auth = betterAuth({
  database: pool,
  secret: args.secret,
  baseURL,
  emailAndPassword: { enabled: true },
  account: { accountLinking: { trustedProviders: args.trustedProviders ?? [] } },
  plugins: [
    genericOAuth({
      config: [
        {
          providerId: args.providerId,
          clientId: args.clientId,
          clientSecret: args.clientSecret,
          discoveryUrl: args.discoveryUrl,
          scopes: args.scopes ?? ["openid", "email", "profile"],
        },
      ],
    }),
  ],
  telemetry: { enabled: false },
  logger: { disabled: !process.env.BETTER_AUTH_LOG },
});

const server = http.createServer(toNodeHandler(auth));
await new Promise((resolve) => server.listen(args.port, "127.0.0.1", resolve));
console.log(JSON.stringify({ ready: true, baseURL }));
