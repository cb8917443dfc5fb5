// "Sign in with …" on the demo site in a real browser (Debian chromium driven by
// playwright-core): the sign-in page's provider button, the OpenID provider's own login and
// consent pages (oidc-provider's development forms), back to the site signed in.
// Usage: node social-browser.mjs <site url> <provider id> <login> <screenshot path> [cancel]
// With `cancel` the user cancels at the provider's login form instead ("[ Cancel ]":
// `access_denied`), and the browser should come back to the sign-in page showing the error.
// Prints one JSON line with what it saw.
import { chromium } from "playwright-core";

const [site, provider, login, screenshot, mode] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const out = {};
try {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(`${site}/sign-in`);
  out.button = await page.textContent(`button[data-provider="${provider}"]`);
  await page.click(`button[data-provider="${provider}"]`);
  // The provider's login form, then its consent form.
  await page.waitForSelector('input[name="login"]');
  out.providerOrigin = new URL(page.url()).origin;
  if (mode === "cancel") {
    await page.click("text=[ Cancel ]");
    await page.waitForURL((url) => url.pathname === "/sign-in" && url.searchParams.has("error"));
    await page.waitForSelector("#auth-error:not([hidden])");
    out.url = page.url();
    out.shown = await page.textContent("#auth-error");
    out.session = await page.evaluate(async () => (await fetch("/api/auth/get-session")).json());
    await page.screenshot({ path: screenshot });
    out.ok = true;
  } else {
    await page.fill('input[name="login"]', login);
    await page.fill('input[name="password"]', "any password");
    await page.click('button[type="submit"]');
    await page.waitForSelector('input[name="prompt"][value="consent"]', { state: "attached" });
    await page.click('button[type="submit"]');
    await page.waitForURL(`${site}/`);
    await page.waitForSelector("#user-name");
    out.name = await page.textContent("#user-name");
    out.session = await page.evaluate(async () => (await fetch("/api/auth/get-session")).json());
    out.accounts = await page.evaluate(async () => (await fetch("/api/auth/list-accounts")).json());
    await page.screenshot({ path: screenshot });
    out.ok = true;
  }
} catch (error) {
  out.ok = false;
  out.error = String(error?.message ?? error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
