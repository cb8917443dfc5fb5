// Light steady load for scripts/compose-netns.sh while it scales the gateways: `concurrency`
// loops of GET /api/auth/convex/token through the load balancer with a signed-in cookie,
// until the file `stop` exists or `seconds` pass. Writes its counts to `status` (JSON) as it
// goes and prints them at the end. Each request opens its own connection: a client's idle
// keep-alive connection that nginx closes on a reload can race the client's next request
// (browsers retry such a request, RFC 9112 section 9.3.1; a bare client reports it), and what
// is under test is the gateways' scaling behind nginx, not that client-side race. Usage:
//   node compose-load.mjs '{"site", "cookie", "stop", "status", "concurrency", "seconds"}'
import { existsSync, writeFileSync } from "node:fs";
import http from "node:http";

const { site, cookie, stop, status, concurrency = 4, seconds = 300 } = JSON.parse(process.argv[2]);
const counts = { ok: 0, failed: 0, errors: [] };
const end = Date.now() + seconds * 1000;
const done = () => existsSync(stop) || Date.now() > end;

function get(url) {
  return new Promise((resolve, reject) => {
    const request = http.get(url, { agent: false, headers: { cookie, connection: "close" }, timeout: 10_000 }, (response) => {
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk) => (body += chunk));
      response.on("end", () => resolve({ status: response.statusCode, body }));
      response.on("error", reject);
    });
    request.on("timeout", () => request.destroy(new Error("timed out after 10 s")));
    request.on("error", reject);
  });
}

async function loop() {
  while (!done()) {
    try {
      const { status: code, body } = await get(`${site}/api/auth/convex/token`);
      const token = code === 200 && JSON.parse(body).token;
      if (token) counts.ok += 1;
      else throw new Error(`status ${code}: ${body.slice(0, 200)}`);
    } catch (e) {
      counts.failed += 1;
      if (counts.errors.length < 10) counts.errors.push(String(e));
    }
    // Light load: about 40 requests per second per loop.
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

const writer = setInterval(() => writeFileSync(status, JSON.stringify(counts)), 200);
await Promise.all(Array.from({ length: concurrency }, loop));
clearInterval(writer);
writeFileSync(status, JSON.stringify({ ...counts, finished: true }));
console.log(JSON.stringify(counts));
