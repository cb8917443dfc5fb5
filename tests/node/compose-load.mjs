// Light steady load for scripts/compose-netns.sh while it scales the gateways: `concurrency`
// loops of GET /api/auth/convex/token through the load balancer with a signed-in cookie,
// until the file `stop` exists or `seconds` pass. Writes its counts to `status` (JSON) as it
// goes and prints them at the end. Usage:
//   node compose-load.mjs '{"site", "cookie", "stop", "status", "concurrency", "seconds"}'
import { existsSync, writeFileSync } from "node:fs";

const { site, cookie, stop, status, concurrency = 4, seconds = 300 } = JSON.parse(process.argv[2]);
const counts = { ok: 0, failed: 0, errors: [] };
const end = Date.now() + seconds * 1000;
const done = () => existsSync(stop) || Date.now() > end;

async function loop() {
  while (!done()) {
    try {
      const r = await fetch(`${site}/api/auth/convex/token`, {
        headers: { cookie },
        signal: AbortSignal.timeout(10_000),
      });
      const body = await r.json();
      if (r.status === 200 && body.token) counts.ok += 1;
      else throw new Error(`status ${r.status}: ${JSON.stringify(body).slice(0, 200)}`);
    } catch (e) {
      counts.failed += 1;
      if (counts.errors.length < 10) counts.errors.push(String(e?.cause ?? e));
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
