// The real better-auth (npm) on the same Postgres database as convex-edge, driven by the Rust
// interop tests. Usage: node better-auth.mjs <command> <json args>; prints one JSON line.
//
//   migrate  {databaseUrl}                         Better Auth creates its own schema
//   sign-up  {databaseUrl, secret, email, password, name}   -> {cookie, userId, token}
//   sign-in  {databaseUrl, secret, email, password}          -> {cookie, userId}
//   session  {databaseUrl, secret, cookie}                   -> {userId, sessionId} or null
//   revoke-session         {databaseUrl, secret, cookie, token}  -> {ok}  (ends `token`'s session)
//   revoke-other-sessions  {databaseUrl, secret, cookie}         -> {ok}
//   change-password        {databaseUrl, secret, cookie, currentPassword, newPassword} -> {ok}
//                          (with revokeOtherSessions)
//   delete-user            {databaseUrl, secret, cookie, password} -> {ok}
//   update-user            {databaseUrl, secret, cookie, name}   -> {ok}
//   request  {databaseUrl, secret, migrate?, baseURL?, trustedOrigins?, freshAge?, requests:
//            [{method, path, headers, body}]} -> [{status, headers, setCookie, body}]: raw HTTP
//            requests through Better Auth's own handler, in order (side-by-side checks against
//            the gateway); `$SELF`, `$VALUE`, `$DONT` and `$TOKEN` in headers and bodies are the
//            site's origin, the newest session cookie value, the newest `dont_remember` value and
//            the session token in the session cookie; a request with method "SQL" runs its body
//            as a statement on the database instead (status 0)
//   request-password-reset {databaseUrl, secret, email}          -> {token, url} (the mailed link)
//   reset-password         {databaseUrl, secret, token, newPassword} -> {ok}
//   send-verification      {databaseUrl, secret, email}          -> {token, url}
//   verify-email           {databaseUrl, secret, token}          -> {ok}
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { jwt } from "better-auth/plugins";
import pg from "pg";

const [command, raw] = process.argv.slice(2);
const args = JSON.parse(raw ?? "{}");
let mailed = null;
const pool = new pg.Pool({ connectionString: args.databaseUrl, max: 2 });

const options = {
  database: pool,
  secret: args.secret ?? "unused-secret-for-migrations-0123456789",
  baseURL: args.baseURL ?? "http://localhost:8080",
  trustedOrigins: args.trustedOrigins ?? [],
  emailAndPassword: {
    enabled: true,
    // The "mail": the last link is kept for the command to print.
    sendResetPassword: async ({ url, token }) => {
      mailed = { url, token };
    },
  },
  emailVerification: {
    sendVerificationEmail: async ({ url, token }) => {
      mailed = { url, token };
    },
  },
  user: { deleteUser: { enabled: true } },
  // `freshAge` in seconds (Better Auth's default, one day, when not given).
  ...(args.freshAge == null ? {} : { session: { freshAge: args.freshAge } }),
  // The same algorithm as convex-edge's JWT_ALG, since both read the one jwks table.
  plugins: [
    jwt({
      jwks: { keyPairConfig: { alg: args.alg ?? "RS256" } },
      jwt: { issuer: "http://localhost:8080", audience: "convex" },
    }),
  ],
  telemetry: { enabled: false },
  logger: { disabled: true },
};

function sessionCookie(headers) {
  const setCookie = headers.get("set-cookie") ?? "";
  const match = setCookie.match(/better-auth\.session_token=([^;]+)/);
  if (!match) throw new Error(`no session cookie in ${setCookie}`);
  return match[1];
}

async function main() {
  if (command === "migrate") {
    const { runMigrations } = await getMigrations(options);
    await runMigrations();
    return { migrated: true };
  }
  if (command === "request" && args.migrate) {
    await (await getMigrations(options)).runMigrations();
  }
  const auth = betterAuth(options);
  if (command === "request") {
    // `$SELF` is the site's origin, `$VALUE` the newest session cookie value set so far,
    // `$DONT` the newest `dont_remember` cookie value.
    const self = new URL(options.baseURL).origin;
    let value = "";
    let dont = "";
    // `$TOKEN`: the session token in that value (`urlencode(token + "." + signature)`).
    const fill = (text) =>
      text
        .replaceAll("$SELF", self)
        .replaceAll("$VALUE", value)
        .replaceAll("$DONT", dont)
        .replaceAll("$TOKEN", decodeURIComponent(value).split(".")[0]);
    const answers = [];
    for (const r of args.requests) {
      if (r.method === "SQL") {
        // A step that changes the database between requests (e.g. ages a session).
        await pool.query(r.body);
        answers.push({ status: 0, headers: {}, setCookie: [], body: "" });
        continue;
      }
      const headers = Object.fromEntries(
        Object.entries(r.headers ?? {}).map(([k, v]) => [k, fill(v)]),
      );
      const response = await auth.handler(
        new Request(new URL(r.path, options.baseURL), {
          method: r.method ?? "GET",
          headers,
          body: r.body == null ? undefined : fill(r.body),
        }),
      );
      const out = {};
      response.headers.forEach((v, name) => {
        if (name !== "set-cookie") out[name] = v;
      });
      const setCookie = response.headers.getSetCookie();
      for (const c of setCookie) {
        const m = c.match(/^(?:__Secure-)?better-auth\.session_token=([^;]+)/);
        if (m) value = m[1];
        const d = c.match(/^(?:__Secure-)?better-auth\.dont_remember=([^;]+)/);
        if (d) dont = d[1];
      }
      answers.push({ status: response.status, headers: out, setCookie, body: await response.text() });
    }
    return answers;
  }
  if (command === "sign-up") {
    const { headers, response } = await auth.api.signUpEmail({
      body: { email: args.email, password: args.password, name: args.name },
      returnHeaders: true,
    });
    return { cookie: sessionCookie(headers), userId: response.user.id, token: response.token };
  }
  if (command === "sign-in") {
    const { headers, response } = await auth.api.signInEmail({
      body: { email: args.email, password: args.password },
      returnHeaders: true,
    });
    return { cookie: sessionCookie(headers), userId: response.user.id };
  }
  if (command === "session") {
    const headers = new Headers({ cookie: `better-auth.session_token=${args.cookie}` });
    const session = await auth.api.getSession({ headers });
    return session ? { userId: session.user.id, sessionId: session.session.id } : null;
  }
  if (command === "request-password-reset") {
    await auth.api.requestPasswordReset({ body: { email: args.email, redirectTo: "/reset" } });
    return mailed;
  }
  if (command === "reset-password") {
    await auth.api.resetPassword({ body: { token: args.token, newPassword: args.newPassword } });
    return { ok: true };
  }
  if (command === "send-verification") {
    await auth.api.sendVerificationEmail({ body: { email: args.email } });
    return mailed;
  }
  if (command === "verify-email") {
    await auth.api.verifyEmail({ query: { token: args.token } });
    return { ok: true };
  }
  const headers = new Headers({ cookie: `better-auth.session_token=${args.cookie}` });
  if (command === "revoke-session") {
    await auth.api.revokeSession({ body: { token: args.token }, headers });
    return { ok: true };
  }
  if (command === "revoke-other-sessions") {
    await auth.api.revokeOtherSessions({ headers });
    return { ok: true };
  }
  if (command === "change-password") {
    await auth.api.changePassword({
      body: {
        currentPassword: args.currentPassword,
        newPassword: args.newPassword,
        revokeOtherSessions: true,
      },
      headers,
    });
    return { ok: true };
  }
  if (command === "delete-user") {
    await auth.api.deleteUser({ body: { password: args.password }, headers });
    return { ok: true };
  }
  if (command === "update-user") {
    await auth.api.updateUser({ body: { name: args.name }, headers });
    return { ok: true };
  }
  throw new Error(`unknown command ${command}`);
}

try {
  console.log(JSON.stringify(await main()));
} catch (error) {
  console.log(JSON.stringify({ error: String(error?.message ?? error), status: error?.status ?? null }));
  process.exitCode = 1;
} finally {
  await pool.end();
}
