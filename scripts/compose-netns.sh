#!/usr/bin/env bash
# Runs docker-compose.yml for real on this machine without Docker: every service in its own
# network namespace, with exactly the environment the file gives it (scripts/compose_netns.py
# says how each image is stood in for), then checks start-up order, sign-up and live chat
# through nginx, gateways scaled 3 → 1 → 3 under load with no failed request, and SIGTERM of
# every service. Part of scripts/test.sh when run as root.
#
# Needs: root (network namespaces, bind mounts), iproute2, util-linux (setpriv), Debian's
# postgresql, redis-server, nginx and dnsmasq-base, curl, Node.js with `npm ci --prefix
# tests/node`, the pinned `docker compose` from scripts/deploy-tools.sh, and the release binary
# (`cargo build --release --bin convex-edge`, or CONVEX_EDGE_BIN). Touches nothing outside the
# namespaces it creates (a private /24 inside them), /etc/netns/<its namespaces> and a temp dir,
# and removes all of them on exit, failure or interruption included.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ "$(id -u)" = 0 ] || missing+=("root (network namespaces and bind mounts)")
for tool in ip setpriv nginx dnsmasq redis-server redis-cli pg_isready curl node python3 ss; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=("postgresql (Debian's server)")
compose=${COMPOSE_BIN:-target/deploy-tools/bin/compose}
[ -x "$compose" ] || missing+=("$compose (scripts/deploy-tools.sh installs it)")
bin=${CONVEX_EDGE_BIN:-target/release/convex-edge}
[ -x "$bin" ] || missing+=("$bin (cargo build --release --bin convex-edge)")
[ -d tests/node/node_modules/convex ] || missing+=("tests/node/node_modules (npm ci --prefix tests/node)")
if [ ${#missing[@]} -gt 0 ]; then
  echo "compose-netns: cannot run; missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  echo "  (apt-get install iproute2 util-linux postgresql redis-server nginx dnsmasq-base curl)" >&2
  exit 2
fi

run="ce$$"
# The Python side removes what it created; this trap is the safety net if it is killed.
trap 'python3 scripts/compose_netns.py --cleanup "$run"' EXIT
COMPOSE_NETNS_RUN=$run python3 scripts/compose_netns.py "$compose" "$bin"
