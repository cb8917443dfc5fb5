// The official Better Auth client (`better-auth/client`) against the gateway: the account and
// session screens of an app, end to end, with one cookie jar per browser and mail read from
// the directory the test's SMTP server (tests/smtp/sink.py) writes.
//
// Usage: node account-client.mjs '{"baseURL", "publicURL", "mailDir", "email", "password"}'
// (`publicURL`: the origin mailed links name, BETTER_AUTH_URL; they are opened on `baseURL`).
// Prints one JSON line {ok: true, steps: [...]}, or {ok: false, error, steps}.
import { harness } from "./auth-browser.mjs";

const args = JSON.parse(process.argv[2]);
const { steps, browser, check, mailTo, run } = harness(args);

async function main() {
  const { email, password } = args;
  const a = browser("a");
  const b = browser("b");

  // Sign-up in browser A, sign-in in browser B: two sessions of one user.
  let r = await a.client.signUp.email({ email, password, name: "Ada" });
  check(r.data?.token && r.data.user.email === email, "sign-up", r);
  r = await b.client.signIn.email({ email, password });
  check(r.data?.token, "sign-in in a second browser", r);

  r = await a.client.listSessions();
  check(Array.isArray(r.data) && r.data.length === 2, "list-sessions shows both browsers", r);
  const bToken = (await b.client.getSession()).data.session.token;

  r = await a.client.listAccounts();
  check(r.data?.length === 1 && r.data[0].providerId === "credential" && Array.isArray(r.data[0].scopes), "list-accounts", r);

  // update-user: the next token carries the new name (both browsers' tokens were cached).
  for (const browser of [a, b]) await browser.fetch(`${args.baseURL}/api/auth/convex/token`);
  r = await a.client.updateUser({ name: "Ada Lovelace" });
  check(r.data?.status === true, "update-user", r);
  r = await b.client.getSession();
  check(r.data?.user.name === "Ada Lovelace", "the other browser sees the new name", r);
  for (const browser of [a, b]) {
    const { token: jwt } = await (await browser.fetch(`${args.baseURL}/api/auth/convex/token`)).json();
    const claims = JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
    check(claims.name === "Ada Lovelace", `browser ${browser.name}'s next token carries the new name`, claims);
  }
  r = await a.client.updateUser({ email: "x@example.com" });
  check(r.error?.code === "EMAIL_CAN_NOT_BE_UPDATED" && r.error.status === 400, "update-user refuses an email", r.error);

  // revoke-session of B's token from A.
  r = await a.client.revokeSession({ token: bToken });
  check(r.data?.status === true, "revoke-session", r);
  r = await b.client.getSession();
  check(r.data === null, "the revoked browser has no session", r);
  r = await a.client.getSession();
  check(r.data?.user.email === email, "the revoking browser keeps its session", r);

  // revoke-other-sessions.
  await b.client.signIn.email({ email, password });
  r = await a.client.revokeOtherSessions();
  check(r.data?.status === true, "revoke-other-sessions", r);
  check((await b.client.getSession()).data === null && (await a.client.getSession()).data !== null, "only the other browser signed out", null);

  // change-password with revokeOtherSessions: B ends, A gets a new session cookie.
  await b.client.signIn.email({ email, password });
  r = await a.client.changePassword({ currentPassword: "wrong password!", newPassword: "another password 1" });
  check(r.error?.code === "INVALID_PASSWORD" && r.error.status === 400, "change-password refuses a wrong password", r.error);
  r = await a.client.changePassword({ currentPassword: password, newPassword: "another password 1", revokeOtherSessions: true });
  check(typeof r.data?.token === "string" && r.data.user.email === email, "change-password with revokeOtherSessions", r);
  check((await b.client.getSession()).data === null, "change-password ended the other browser", null);
  check((await a.client.getSession()).data?.session.token === r.data.token, "the changing browser is on its new session", null);
  r = await b.client.signIn.email({ email, password });
  check(r.error?.status === 401, "the old password no longer signs in", r.error);

  // Password reset by mail.
  r = await b.client.requestPasswordReset({ email, redirectTo: "/reset" });
  check(r.data?.status === true, "request-password-reset", r);
  r = await b.client.requestPasswordReset({ email: "nobody@example.com", redirectTo: "/reset" });
  check(r.data?.status === true, "request-password-reset answers the same for an unknown address", r);
  const reset = await mailTo(email);
  const follow = await b.fetch(reset.link);
  const location = follow.headers.get("location");
  check(follow.status === 302 && location.startsWith("/reset?token="), "the reset link redirects with the token", { status: follow.status, location });
  const token = new URL(location, args.baseURL).searchParams.get("token");
  r = await b.client.resetPassword({ newPassword: "short", token });
  check(r.error?.code === "PASSWORD_TOO_SHORT", "reset-password refuses a short password", r.error);
  r = await b.client.resetPassword({ newPassword: "reset password 22", token });
  check(r.data?.status === true, "reset-password", r);
  r = await b.client.resetPassword({ newPassword: "reset password 33", token });
  check(r.error?.code === "INVALID_TOKEN" && r.error.status === 400, "a reset token works once", r.error);
  const used = await b.fetch(reset.link);
  check(used.headers.get("location") === "/reset?error=INVALID_TOKEN", "a used reset link redirects with the error", used.headers.get("location"));
  r = await b.client.signIn.email({ email, password: "reset password 22" });
  check(r.data?.token, "the reset password signs in", r);

  // Email verification by mail.
  r = await a.client.getSession();
  check(r.data?.user.emailVerified === false, "not verified yet", r.data?.user);
  r = await a.client.sendVerificationEmail({ email: "other@example.com" });
  check(r.error?.code === "EMAIL_MISMATCH", "send-verification-email refuses another address", r.error);
  r = await a.client.sendVerificationEmail({ email, callbackURL: "/verified" });
  check(r.data?.status === true, "send-verification-email", r);
  const verify = await mailTo(email);
  const verifyUrl = new URL(verify.link);
  const json = await (await a.fetch(`${args.baseURL}/api/auth/verify-email?token=${verifyUrl.searchParams.get("token")}`)).json();
  check(json.status === true, "verify-email (JSON form)", json);
  const redirected = await a.fetch(verify.link);
  check(redirected.status === 302 && redirected.headers.get("location") === "/verified", "verify-email (redirect form)", redirected.headers.get("location"));
  r = await a.client.getSession();
  check(r.data?.user.emailVerified === true, "the address is verified", r.data?.user);
  const bad = await a.fetch(`${args.baseURL}/api/auth/verify-email?token=garbage&callbackURL=%2Fverified`);
  check(bad.headers.get("location") === "/verified?error=INVALID_TOKEN", "a bad verification link redirects with the error", bad.headers.get("location"));
  r = await a.client.sendVerificationEmail({ email });
  check(r.error?.code === "EMAIL_ALREADY_VERIFIED", "send-verification-email after verification", r.error);

  // change-email: a link to the new address changes it when opened.
  const newEmail = `new-${email}`;
  r = await a.client.changeEmail({ newEmail, callbackURL: "/changed" });
  check(r.data?.status === true, "change-email", r);
  const change = await mailTo(newEmail);
  const changed = await a.fetch(change.link);
  check(changed.status === 302 && changed.headers.get("location") === "/changed", "the change-email link redirects", changed.headers.get("location"));
  r = await a.client.getSession();
  check(r.data?.user.email === newEmail && r.data.user.emailVerified === true, "the address changed", r.data?.user);
  {
    const { token: jwt } = await (await a.fetch(`${args.baseURL}/api/auth/convex/token`)).json();
    const claims = JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
    check(claims.email === newEmail, "the next token carries the new address", claims);
  }

  // revoke-sessions, then delete-user with the password.
  r = await b.client.revokeSessions();
  check(r.data?.status === true && b.jar.size === 0, "revoke-sessions clears the cookie", r);
  check((await a.client.getSession()).data === null, "revoke-sessions ended every browser", null);
  await a.client.signIn.email({ email: newEmail, password: "reset password 22" });
  r = await a.client.deleteUser({ password: "not the password" });
  check(r.error?.code === "INVALID_PASSWORD", "delete-user refuses a wrong password", r.error);
  r = await a.client.deleteUser({ password: "reset password 22" });
  check(r.data?.success === true, "delete-user", r);
  r = await a.client.signIn.email({ email: newEmail, password: "reset password 22" });
  check(r.error?.status === 401, "the deleted user cannot sign in", r.error);
  return { ok: true, steps };
}

run(main);
