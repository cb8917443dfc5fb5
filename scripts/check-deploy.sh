#!/usr/bin/env bash
# Static checks of the deployment files with the real tools (scripts/deploy-tools.sh installs
# them; no Docker engine or cluster needed):
#   - docker-compose.yml through Compose v2's own `config` (interpolation, anchors, schema),
#     with an .env like a user's, and refused without one (the secrets are required);
#   - every kustomize overlay rendered, then validated against the Kubernetes schemas
#     (`kubernetes-validate --strict`: unknown fields fail too);
#   - every render checked against Pod Security "restricted" (deploy/k8s/check-restricted.py).
# The production overlay is rendered with secrets.env made from secrets.env.example, as a
# user's copy would be. Prints `deploy checks: N passed, 0 failed`; exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${DEPLOY_TOOLS:-target/deploy-tools/bin}
for tool in compose kubectl kubernetes-validate python; do
  if [ ! -x "$tools/$tool" ]; then
    echo "check-deploy: $tools/$tool missing: run scripts/deploy-tools.sh" >&2
    exit 2
  fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0

# Compose: a user's .env (every variable of .env.example set) renders; no .env is refused.
sed -e 's/^BETTER_AUTH_SECRET=$/BETTER_AUTH_SECRET=0123456789abcdef0123456789abcdef/' \
    -e 's/^CONVEX_INSTANCE_SECRET=$/CONVEX_INSTANCE_SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef/' \
    .env.example > "$tmp/.env"
"$tools/compose" --project-directory . --env-file "$tmp/.env" config --format json > "$tmp/compose.json"
[ -n "${DEPLOY_RENDER_DIR:-}" ] && cp "$tmp/compose.json" "$DEPLOY_RENDER_DIR/compose.json"
passed=$((passed + 1))
if "$tools/compose" --project-directory . --env-file /dev/null config --quiet 2> "$tmp/err" ||
  ! grep -Eq "required variable (BETTER_AUTH_SECRET|CONVEX_INSTANCE_SECRET) is missing a value: set \1 in .env" "$tmp/err"; then
  # (Compose names whichever missing variable it meets first.)
  echo "check-deploy: compose rendered without the secrets in .env:" >&2
  cat "$tmp/err" >&2
  exit 1
fi
passed=$((passed + 1))

# Kubernetes: every overlay, in a copy of deploy/k8s where the git-ignored secrets exist.
cp -a deploy/k8s "$tmp/k8s"
for example in "$tmp"/k8s/overlays/*/secrets.env.example; do
  [ -e "$example" ] && cp "$example" "${example%.example}"
done
for overlay in "$tmp"/k8s/overlays/*/; do
  name=$(basename "$overlay")
  "$tools/kubectl" kustomize "$overlay" > "$tmp/$name.yaml"
  "$tools/kubernetes-validate" --strict --quiet "$tmp/$name.yaml"
  "$tools/python" deploy/k8s/check-restricted.py < "$tmp/$name.yaml"
  passed=$((passed + 3))
  # Rendered for the Rust test's consistency checks.
  [ -n "${DEPLOY_RENDER_DIR:-}" ] && cp "$tmp/$name.yaml" "$DEPLOY_RENDER_DIR/$name.yaml"
done
echo "deploy checks: $passed passed, 0 failed"
