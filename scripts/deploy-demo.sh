#!/usr/bin/env bash
# Deploys the demo app's Convex functions (examples/demo/convex) to the self-hosted Convex
# backend of docker-compose.yml, and tells that backend to trust convex-edge's tokens.
# Run after `docker compose up -d` from the checkout (needs docker compose, Node.js 20+, npm):
#   scripts/deploy-demo.sh
# What it does:
#   1. the admin key: CONVEX_SELF_HOSTED_ADMIN_KEY if set, else the backend's own
#      `./generate_admin_key.sh` (derived from CONVEX_INSTANCE_SECRET in .env);
#   2. the issuer: what `convex-edge convex-auth-config` prints inside the auth container
#      (its JWT_ISSUER), so Convex checks `iss` against exactly what auth signs;
#   3. the JWKS: auth's HTTP listener as the backend's container reaches it
#      (CONVEX_EDGE_JWKS_URL, default http://auth:3001/api/auth/jwks; with static keys in
#      auth's JWKS variable, the data: URI that convex-auth-config prints instead);
#   4. `npx convex env set` of both, then `npx convex deploy` to CONVEX_SELF_HOSTED_URL
#      (default http://localhost:3220, the backend's published port).
set -euo pipefail
cd "$(dirname "$0")/.."

compose() { docker compose "$@"; }
url=${CONVEX_SELF_HOSTED_URL:-http://localhost:3220}
jwks_url=${CONVEX_EDGE_JWKS_URL:-http://auth:3001/api/auth/jwks}

if [ ! -f .env ]; then
  echo "deploy-demo: no .env here: cp .env.example .env and fill it in, then docker compose up -d" >&2
  exit 1
fi
key=${CONVEX_SELF_HOSTED_ADMIN_KEY:-}
if [ -z "$key" ]; then
  key=$(compose exec -T convex ./generate_admin_key.sh | tail -n 1 | tr -d '\r')
fi
if [ -z "$key" ]; then
  echo "deploy-demo: no admin key (is the convex service up? docker compose ps)" >&2
  exit 1
fi

config=$(compose exec -T auth convex-edge convex-auth-config)
read -r issuer jwks < <(node -e '
  const p = JSON.parse(process.argv[1]).providers[0];
  console.log(p.issuer, p.jwks);
' "$config")
case "$jwks" in
  data:*) ;;                 # static keys: the data: URI needs no network
  *) jwks=$jwks_url ;;       # keys in Postgres: auth serves them, rotation included
esac
echo "deploy-demo: Convex at $url trusts iss=$issuer, JWKS ${jwks:0:60}"

export CONVEX_SELF_HOSTED_URL=$url CONVEX_SELF_HOSTED_ADMIN_KEY=$key
cd examples/demo
npm ci --no-audit --no-fund --loglevel=error
npx convex env set CONVEX_EDGE_ISSUER "$issuer" </dev/null
npx convex env set CONVEX_EDGE_JWKS "$jwks" </dev/null
npx convex deploy </dev/null
echo "deploy-demo: deployed; open ${issuer%/} (sign up, then chat in #general)"
