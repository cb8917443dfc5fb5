// Browsers for the official Better Auth client (`better-auth/client`) against the gateway:
// one cookie jar each, and mail read from the directory the test's SMTP server
// (tests/smtp/sink.py) writes. Shared by account-client.mjs and account-options.mjs.
//
// `args`: {baseURL, publicURL, mailDir}; `publicURL` is the origin mailed links name
// (BETTER_AUTH_URL); they are opened on `baseURL`.
import fs from "node:fs";
import path from "node:path";
import { createAuthClient } from "better-auth/client";
import { until } from "./until.mjs";

export function harness(args) {
  const steps = [];

  /** A browser: a fetch that keeps cookies (by name) and follows no redirect by itself. */
  function browser(name) {
    const jar = new Map();
    const fetchWithJar = async (input, init = {}) => {
      const headers = new Headers(init.headers ?? {});
      if (jar.size) headers.set("cookie", [...jar].map(([k, v]) => `${k}=${v}`).join("; "));
      // Browsers send their origin on POSTs; the gateway checks it as Better Auth does.
      headers.set("origin", args.baseURL);
      const response = await fetch(input, { ...init, headers, redirect: "manual" });
      for (const line of response.headers.getSetCookie()) {
        const [pair, ...attrs] = line.split(";");
        const [k, ...v] = pair.split("=");
        const maxAge = attrs.find((a) => a.trim().toLowerCase().startsWith("max-age="));
        if (maxAge && Number(maxAge.split("=")[1]) <= 0) jar.delete(k.trim());
        else jar.set(k.trim(), v.join("="));
      }
      return response;
    };
    const client = createAuthClient({ baseURL: args.baseURL, fetchOptions: { customFetchImpl: fetchWithJar } });
    return { name, jar, client, fetch: fetchWithJar };
  }

  function check(condition, what, detail) {
    if (!condition) throw new Error(`${what}: ${JSON.stringify(detail)}`);
    steps.push(what);
  }

  /** Every message received so far, in order. */
  function messages() {
    return fs
      .readdirSync(args.mailDir)
      .filter((f) => f.endsWith(".json"))
      .sort()
      .map((f) => JSON.parse(fs.readFileSync(path.join(args.mailDir, f), "utf8")));
  }

  /** The next mail to `to` not yet read; its first link to the gateway. */
  const read = new Set();
  async function mailTo(to) {
    const file = await until(() => {
      for (const f of fs.readdirSync(args.mailDir).filter((f) => f.endsWith(".json")).sort()) {
        if (read.has(f)) continue;
        const m = JSON.parse(fs.readFileSync(path.join(args.mailDir, f), "utf8"));
        if (m.to.includes(to)) return f;
      }
      return null;
    }, `mail to ${to}`);
    read.add(file);
    const mail = JSON.parse(fs.readFileSync(path.join(args.mailDir, file), "utf8"));
    const mailed = mail.text.match(/https?:\/\/\S+/)[0];
    check(mailed.startsWith(`${args.publicURL}/api/auth/`), `mail to ${to} links to the public origin`, mailed);
    const href = mail.html
      .match(/href="([^"]+)"/)[1]
      .replace(/&#x([0-9a-f]+);/gi, (_, h) => String.fromCharCode(parseInt(h, 16)))
      .replaceAll("&amp;", "&");
    check(href === mailed, `mail to ${to} carries the link in both bodies`, mail);
    // The site's public origin is this gateway.
    return { mail, link: args.baseURL + mailed.slice(args.publicURL.length) };
  }

  /** The claims of the next Convex token of `browser`. */
  async function claims(b) {
    const { token: jwt } = await (await b.fetch(`${args.baseURL}/api/auth/convex/token`)).json();
    return JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
  }

  /** Prints the outcome of `main` as one JSON line. */
  function run(main) {
    main()
      .then((out) => console.log(JSON.stringify(out)))
      .catch((e) => console.log(JSON.stringify({ ok: false, error: String(e.stack ?? e), steps })));
  }

  return { steps, browser, check, messages, mailTo, claims, run };
}
