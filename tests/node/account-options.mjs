// Better Auth's account options as a user sets them (AUTH_* on the auth service), seen through
// the official client (`better-auth/client`) against the gateway, mail read from the test's
// SMTP server (tests/smtp/sink.py).
//
// Usage: node account-options.mjs <case> '{"baseURL", "publicURL", "mailDir", "email", "password", ...}'
//   change-email-without-verification   AUTH_CHANGE_EMAIL_ENABLED + AUTH_CHANGE_EMAIL_WITHOUT_VERIFICATION
//   send-verification-on-sign-in        AUTH_REQUIRE_EMAIL_VERIFICATION + AUTH_SEND_VERIFICATION_ON_SIGN_IN
//                                       (AUTH_SEND_VERIFICATION_ON_SIGN_UP off)
//   password-reset-sessions {revoke}    AUTH_REVOKE_SESSIONS_ON_PASSWORD_RESET = `revoke`
// Prints one JSON line {ok: true, steps: [...]}, or {ok: false, error, steps}.
import { harness } from "./auth-browser.mjs";

const [which, raw] = process.argv.slice(2);
const args = JSON.parse(raw);
const { steps, browser, check, messages, mailTo, claims, run } = harness(args);
const { email, password } = args;

async function changeEmailWithoutVerification() {
  const a = browser("a");
  let r = await a.client.signUp.email({ email, password, name: "Ada" });
  check(r.data?.user.emailVerified === false, "sign-up (not verified)", r);
  check((await claims(a)).email === email, "a token for the first address", null);
  // Unverified: the address changes at once, and a link to verify it goes to the new one.
  const second = `second-${email}`;
  r = await a.client.changeEmail({ newEmail: second, callbackURL: "/verified" });
  check(r.data?.status === true, "change-email", r);
  r = await a.client.getSession();
  check(r.data?.user.email === second && r.data.user.emailVerified === false, "the address changed at once, unverified", r.data?.user);
  check((await claims(a)).email === second, "the next token carries the new address", null);
  const verify = await mailTo(second);
  check(new URL(verify.link).pathname === "/api/auth/verify-email", "the mail verifies the new address", verify.link);
  check(messages().every((m) => !m.to.includes(email)), "nothing mailed to the old address", messages());
  const opened = await a.fetch(verify.link);
  check(opened.status === 302 && opened.headers.get("location") === "/verified", "the link verifies", opened.headers.get("location"));
  r = await a.client.getSession();
  check(r.data?.user.email === second && r.data.user.emailVerified === true, "the new address is verified", r.data?.user);
  r = await a.client.signIn.email({ email: second, password });
  check(r.data?.token, "the new address signs in", r);
  r = await a.client.signIn.email({ email, password });
  check(r.error?.status === 401, "the old address no longer does", r.error);
  // Verified: the option no longer applies; the change waits for the link.
  const third = `third-${email}`;
  r = await a.client.changeEmail({ newEmail: third, callbackURL: "/changed" });
  check(r.data?.status === true, "change-email once verified", r);
  r = await a.client.getSession();
  check(r.data?.user.email === second, "a verified address changes only through the link", r.data?.user);
  const change = await mailTo(third);
  const changed = await a.fetch(change.link);
  check(changed.status === 302 && changed.headers.get("location") === "/changed", "the change link redirects", changed.headers.get("location"));
  r = await a.client.getSession();
  check(r.data?.user.email === third, "the address changed through the link", r.data?.user);
  // An address that is taken: the same answer, nothing changes, nothing is mailed there.
  const b = browser("b");
  r = await b.client.signUp.email({ email: `taken-${email}`, password, name: "Bob" });
  check(r.data?.token, "another user", r);
  const before = messages().length;
  r = await b.client.changeEmail({ newEmail: third });
  check(r.data?.status === true, "change-email to a taken address answers as any other", r);
  r = await b.client.getSession();
  check(r.data?.user.email === `taken-${email}`, "a taken address is not given away", r.data?.user);
  check(messages().length === before, "nothing mailed for a taken address", messages().slice(before));
  return { ok: true, steps };
}

async function sendVerificationOnSignIn() {
  const a = browser("a");
  let r = await a.client.signUp.email({ email, password, name: "Ada", callbackURL: "/welcome" });
  check(r.data?.token === null && a.jar.size === 0, "sign-up opens no session", r);
  check(messages().length === 0, "no mail on sign-up (AUTH_SEND_VERIFICATION_ON_SIGN_UP off)", messages());
  r = await a.client.signIn.email({ email, password: "not the password" });
  check(r.error?.status === 401, "a wrong password is refused as usual", r.error);
  check(messages().length === 0, "a wrong password mails nothing", messages());
  r = await a.client.signIn.email({ email, password, callbackURL: "/after" });
  check(r.error?.code === "EMAIL_NOT_VERIFIED" && r.error.status === 403, "sign-in refused until verified", r.error);
  const first = await mailTo(email);
  check(new URL(first.link).searchParams.get("callbackURL") === "/after", "the link returns to the sign-in's callbackURL", first.link);
  r = await a.client.signIn.email({ email, password });
  check(r.error?.code === "EMAIL_NOT_VERIFIED", "refused again", r.error);
  const again = await mailTo(email);
  check(new URL(again.link).pathname === "/api/auth/verify-email", "each refused sign-in mails a link", again.link);
  const opened = await a.fetch(first.link);
  check(opened.status === 302 && opened.headers.get("location") === "/after", "the first link verifies", opened.headers.get("location"));
  r = await a.client.signIn.email({ email, password });
  check(r.data?.token && r.data.user.emailVerified === true, "sign-in once verified", r);
  check((await claims(a)).emailVerified === true, "the token says verified", null);
  const count = messages().length;
  r = await browser("b").client.signIn.email({ email, password });
  check(r.data?.token, "a verified sign-in", r);
  check(messages().length === count, "a verified sign-in mails nothing", messages().slice(count));
  return { ok: true, steps };
}

async function passwordResetSessions() {
  const a = browser("a");
  const b = browser("b");
  const c = browser("c");
  let r = await a.client.signUp.email({ email, password, name: "Ada" });
  check(r.data?.token, "sign-up", r);
  r = await b.client.signIn.email({ email, password });
  check(r.data?.token, "sign-in in a second browser", r);
  const other = browser("other");
  r = await other.client.signUp.email({ email: `other-${email}`, password, name: "Bob" });
  check(r.data?.token, "another user", r);
  r = await c.client.requestPasswordReset({ email, redirectTo: "/reset" });
  check(r.data?.status === true, "request-password-reset from a third browser", r);
  const reset = await mailTo(email);
  const follow = await c.fetch(reset.link);
  const token = new URL(follow.headers.get("location"), args.baseURL).searchParams.get("token");
  check(follow.status === 302 && token, "the link gives the token", follow.headers.get("location"));
  r = await c.client.resetPassword({ newPassword: "a reset password 1", token });
  check(r.data?.status === true, "reset-password", r);
  for (const x of [a, b]) {
    const session = (await x.client.getSession()).data;
    if (args.revoke) check(session === null, `browser ${x.name} signed out by the reset`, session);
    else check(session?.user.email === email, `browser ${x.name} keeps its session`, session);
    const token = await x.fetch(`${args.baseURL}/api/auth/convex/token`);
    check(token.status === (args.revoke ? 401 : 200), `browser ${x.name}'s token after the reset`, token.status);
  }
  check((await other.client.getSession()).data?.user.email === `other-${email}`, "another user keeps its session", null);
  r = await c.client.signIn.email({ email, password: "a reset password 1" });
  check(r.data?.token, "the new password signs in", r);
  check((await c.client.getSession()).data !== null, "and its session lives", null);
  return { ok: true, steps };
}

const cases = {
  "change-email-without-verification": changeEmailWithoutVerification,
  "send-verification-on-sign-in": sendVerificationOnSignIn,
  "password-reset-sessions": passwordResetSessions,
};
if (!cases[which]) throw new Error(`unknown case ${which}`);
run(cases[which]);
