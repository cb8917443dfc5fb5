// Parses the deployment files (no Docker or Kubernetes runs here) so the Rust test can check
// what they say: docker-compose.yml and every YAML document under deploy/k8s.
// Usage: node deploy-check.mjs <workspace root>; prints one JSON line.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { parse, parseAllDocuments } from "yaml";

const root = process.argv[2];
const yamlFiles = (dir) =>
  readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return yamlFiles(path);
    return name.endsWith(".yaml") ? [path] : [];
  });

const out = {
  compose: parse(readFileSync(join(root, "docker-compose.yml"), "utf8"), { merge: true }),
  k8s: {},
};
for (const file of yamlFiles(join(root, "deploy/k8s"))) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const d of docs) if (d.errors.length) throw new Error(`${file}: ${d.errors[0].message}`);
  out.k8s[relative(root, file)] = docs.map((d) => d.toJSON());
}
console.log(JSON.stringify(out));
