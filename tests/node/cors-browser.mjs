// CORS on the gateway's auth routes from a real browser (Debian chromium driven by
// playwright-core): a page on each origin given calls the gateway with `fetch(…,
// {credentials: "include"})` — sign-up (a JSON POST, so the browser sends a preflight
// first), then get-session with the cookie that set.
// Usage: node cors-browser.mjs '{"gateway": url, "origins": [port, …], "email": …, "password": …}'
// Each origin is http://127.0.0.1:<port>, served here with an empty page. Prints one JSON line:
// per origin, {signUp, session} each {status, body} as the page read it or {error} when the
// browser refused to hand the answer to the page.
import http from "node:http";
import { chromium } from "playwright-core";

const args = JSON.parse(process.argv[2]);

function serve(port) {
  const server = http.createServer((_, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>site</title>");
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

const servers = await Promise.all(args.origins.map(serve));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const results = {};
try {
  for (const [i, port] of args.origins.entries()) {
    const origin = `http://127.0.0.1:${port}`;
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${origin}/`);
    results[origin] = await page.evaluate(
      async ({ gateway, email, password }) => {
        const call = async (path, init) => {
          try {
            const r = await fetch(`${gateway}${path}`, { credentials: "include", ...init });
            return { status: r.status, body: await r.json() };
          } catch (e) {
            return { error: String(e) };
          }
        };
        const signUp = await call("/api/auth/sign-up/email", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ name: "Cors", email, password }),
        });
        const session = await call("/api/auth/get-session", {});
        return { signUp, session };
      },
      { gateway: args.gateway, email: `${i}-${args.email}`, password: args.password },
    );
    await context.close();
  }
} finally {
  await browser.close();
  for (const s of servers) s.close();
}
console.log(JSON.stringify(results));
