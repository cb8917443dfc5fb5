// Stand-ins for the endpoints of Better Auth's built-in providers that cannot be reached from
// the test machine (GitHub, Google, Discord, Microsoft, Apple): a token endpoint, the profile
// APIs and a JWKS, with ID tokens signed by a key of this process (RS256, as Google's).
// Usage: node oauth-standin.mjs '<json>' with {clientId, clientSecret}; prints {url} once it
// listens, then serves until killed.
// Each login is its own user: `<login>@example.com`, with its own GitHub and Discord id (given
// in the order logins are first seen, from 4242 and from Discord's documented example id).
//   POST /token              code = a login; answers tokens for that login (a Google-shaped
//                            ID token); the code `bad` is refused the way GitHub refuses (200
//                            with `error`); the code `stall` is never answered, and a code
//                            `slow-<login>` is answered after 6 s (a slow provider: longer
//                            than the gateway's own deadline, within auth's)
//   POST /<tenant>/oauth2/v2.0/token
//                            Microsoft Entra ID's token endpoint under the authority this
//                            process is: a v2.0 ID token of issuer `<url>/<tenant>/v2.0`
//                            with `tid`, `oid` and `verified_primary_email`
//   GET  /<tenant>/discovery/v2.0/keys, /certs
//                            the JWKS
//   GET  /user, /user/emails GitHub's profile and addresses for the bearer token
//   GET  /users/@me          Discord's profile
//   POST /mint               {claims} -> {token}: an ID token signed with the JWKS key
//   GET  /requests           every token request's form, in order
import http from "node:http";
import { SignJWT, exportJWK, generateKeyPair } from "jose";

const args = JSON.parse(process.argv[2] ?? "{}");
const { privateKey, publicKey } = await generateKeyPair("RS256", { extractable: true });
const jwk = { ...(await exportJWK(publicKey)), kid: "standin-1", alg: "RS256", use: "sig" };
const requests = [];
let base = "";

async function mint(claims) {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: "RS256", kid: jwk.kid })
    .sign(privateKey);
}

function login(req) {
  const auth = req.headers.authorization ?? "";
  return auth.startsWith("Bearer at-") ? auth.slice("Bearer at-".length) : null;
}

// Numeric ids per login, stable for the life of the process.
const seen = [];
function ordinal(who) {
  if (!seen.includes(who)) seen.push(who);
  return BigInt(seen.indexOf(who));
}
const githubId = (who) => 4242 + Number(ordinal(who));
// Discord snowflakes: the documented example id, then one a millisecond later per login.
const discordId = (who) => String(80351110224678912n + (ordinal(who) << 22n));

function body(req) {
  return new Promise((resolve) => {
    let data = "";
    req.on("data", (c) => (data += c));
    req.on("end", () => resolve(data));
  });
}

const server = http.createServer(async (req, res) => {
  const send = (status, value) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(value));
  };
  const url = new URL(req.url, base);
  const microsoft = url.pathname.match(/^\/([^/]+)\/(oauth2\/v2\.0\/token|discovery\/v2\.0\/keys)$/);
  if (req.method === "POST" && (url.pathname === "/token" || microsoft?.[2].endsWith("token"))) {
    const form = Object.fromEntries(new URLSearchParams(await body(req)));
    requests.push(form);
    if (form.client_id !== args.clientId || form.client_secret !== args.clientSecret) {
      return send(401, { error: "invalid_client" });
    }
    if (form.code === "bad") return send(200, { error: "bad_verification_code" });
    if (form.code === "stall") return;
    if (form.code.startsWith("slow-")) await new Promise((r) => setTimeout(r, 6000));
    const now = Math.floor(Date.now() / 1000);
    const tokens = {
      access_token: `at-${form.code}`,
      refresh_token: `rt-${form.code}`,
      token_type: "bearer",
      expires_in: 3600,
    };
    if (microsoft) {
      const tid = microsoft[1];
      const email = `${form.code}@example.com`;
      return send(200, {
        ...tokens,
        scope: "openid profile email User.Read",
        id_token: await mint({
          iss: `${base}/${tid}/v2.0`,
          aud: args.clientId,
          tid,
          oid: `oid-${form.code}`,
          sub: `pairwise-${form.code}`,
          email,
          verified_primary_email: [email],
          name: `${form.code} (microsoft)`,
          iat: now,
          nbf: now,
          exp: now + 3600,
        }),
      });
    }
    return send(200, {
      ...tokens,
      scope: "read:user user:email",
      id_token: await mint({
        iss: "https://accounts.google.com",
        aud: args.clientId,
        sub: `google-${form.code}`,
        email: `${form.code}@example.com`,
        email_verified: true,
        name: `${form.code} (google)`,
        picture: `https://example.com/${form.code}.png`,
        iat: now,
        exp: now + 3600,
      }),
    });
  }
  if (req.method === "GET" && url.pathname === "/user") {
    const who = login(req);
    if (!who || req.headers["user-agent"] !== "better-auth") return send(401, {});
    return send(200, { id: githubId(who), login: who, name: null, email: null, avatar_url: `https://avatars.example/${who}` });
  }
  if (req.method === "GET" && url.pathname === "/user/emails") {
    const who = login(req);
    if (!who) return send(401, {});
    return send(200, [
      { email: `${who}@old.example.com`, primary: false, verified: false },
      { email: `${who}@example.com`, primary: true, verified: true },
    ]);
  }
  if (req.method === "GET" && url.pathname === "/users/@me") {
    const who = login(req);
    if (!who) return send(401, {});
    return send(200, {
      id: discordId(who),
      username: who,
      global_name: null,
      avatar: null,
      discriminator: "0",
      email: `${who}@example.com`,
      verified: true,
    });
  }
  if (req.method === "GET" && (url.pathname === "/certs" || microsoft?.[2].endsWith("keys"))) {
    return send(200, { keys: [jwk] });
  }
  if (req.method === "POST" && url.pathname === "/mint") {
    const { claims } = JSON.parse(await body(req));
    return send(200, { token: await mint(claims) });
  }
  if (req.method === "GET" && url.pathname === "/requests") return send(200, requests);
  send(404, { error: "not_found" });
});

await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
base = `http://127.0.0.1:${server.address().port}`;
console.log(JSON.stringify({ url: base }));
