// A real OpenID Connect provider for the social sign-in tests: panva's `oidc-provider` with its
// development login and consent forms (any login, any password; the login is the `sub`).
// Usage: node oidc-provider.mjs '<json>' with {clientId, clientSecret, redirectUris, accounts?,
// idTokenTtl?}; prints one JSON line {issuer} once it listens on 127.0.0.1, then serves until
// killed. `accounts` maps a login to its claims ({email, email_verified, name, picture});
// a login not in it gets `<login>@example.com`, verified.
import http from "node:http";
import Provider from "oidc-provider";
import { exportJWK, generateKeyPair } from "jose";

const args = JSON.parse(process.argv[2] ?? "{}");
const accounts = args.accounts ?? {};

const { privateKey } = await generateKeyPair("RS256", { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: "test-rs256", alg: "RS256", use: "sig" };

const server = http.createServer();
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: args.clientId,
      client_secret: args.clientSecret,
      redirect_uris: args.redirectUris,
      token_endpoint_auth_method: "client_secret_post",
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
    },
  ],
  jwks: { keys: [jwk] },
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name", "picture"],
  },
  // Refresh tokens for every client that asks for them (Better Auth stores them).
  issueRefreshToken: async () => true,
  ttl: {
    IdToken: 3600,
    AccessToken: 3600,
    RefreshToken: 86400,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },
  pkce: { required: () => true },
  async findAccount(_ctx, sub) {
    const claims = accounts[sub] ?? { email: `${sub}@example.com`, email_verified: true, name: sub };
    return { accountId: sub, claims: async () => ({ sub, ...claims }) };
  },
  cookies: { keys: ["oidc-provider-test-cookie-key"] },
});
// The tests drive it over plain http on 127.0.0.1.
provider.proxy = false;

server.on("request", provider.callback());
console.log(JSON.stringify({ issuer }));
