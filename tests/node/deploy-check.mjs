// Reads what scripts/check-deploy.sh rendered with the real tools (`docker compose config`,
// `kubectl kustomize` of every overlay) so the Rust test can check what the files say once
// rendered. Usage: node deploy-check.mjs <render dir>; prints one JSON line:
// {"compose": <compose.json>, "k8s": {"<overlay>": [documents]}}.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";

const dir = process.argv[2];
const out = { compose: JSON.parse(readFileSync(join(dir, "compose.json"), "utf8")), k8s: {} };
for (const name of readdirSync(dir).filter((n) => n.endsWith(".yaml"))) {
  const docs = parseAllDocuments(readFileSync(join(dir, name), "utf8"));
  for (const d of docs) if (d.errors.length) throw new Error(`${name}: ${d.errors[0].message}`);
  out.k8s[name.replace(/\.yaml$/, "")] = docs.map((d) => d.toJSON()).filter(Boolean);
}
console.log(JSON.stringify(out));
