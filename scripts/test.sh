#!/usr/bin/env bash
# Runs the whole test suite: installs the npm clients the tests drive, Chromium for the
# browser test and the pinned deployment tools (scripts/deploy-tools.sh), makes sure Postgres
# and Redis answer (starting the local ones if they are down), then `cargo test` for the
# workspace; as root, then runs docker-compose.yml for real in network namespaces
# (scripts/compose-netns.sh, on the release binary).
set -euo pipefail
cd "$(dirname "$0")/.."

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return; fi
  if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  # Otherwise edge-testkit starts a throwaway cluster with initdb/pg_ctl.
}

ensure_postgres_ssl() {
  # auth's TLS tests need a Postgres with TLS on; Debian's cluster has the snakeoil pair.
  local psql=(psql -h 127.0.0.1 -U postgres -Atqc)
  if ! "${psql[@]}" 'select 1' >/dev/null 2>&1; then return; fi
  if [ "$("${psql[@]}" 'show ssl')" = on ]; then return; fi
  if [ ! -f /etc/ssl/private/ssl-cert-snakeoil.key ] && command -v apt-get >/dev/null; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ssl-cert >/dev/null
  fi
  echo "turning on TLS in PostgreSQL"
  "${psql[@]}" "alter system set ssl_cert_file = '/etc/ssl/certs/ssl-cert-snakeoil.pem'"
  "${psql[@]}" "alter system set ssl_key_file = '/etc/ssl/private/ssl-cert-snakeoil.key'"
  "${psql[@]}" "alter system set ssl = on"
  "${psql[@]}" "select pg_reload_conf()" >/dev/null
}

ensure_redis() {
  if command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return; fi
  if command -v redis-server >/dev/null; then
    echo "starting Redis"
    mkdir -p /tmp/convex-edge-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/convex-edge-redis --logfile /tmp/convex-edge-redis/redis.log
  fi
}

ensure_chromium() {
  # The page tests drive Debian's chromium with playwright-core.
  if [ -x /usr/bin/chromium ]; then return; fi
  if command -v apt-get >/dev/null; then
    echo "installing chromium for the browser test"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
  if [ ! -x /usr/bin/chromium ]; then
    echo "the browser test needs Chromium at /usr/bin/chromium (apt-get install chromium)" >&2
    exit 1
  fi
}

ensure_netns_packages() {
  # scripts/compose-netns.sh stands Debian's nginx and dnsmasq in for the compose images
  # (RUNLEVEL=1: the package must not start an nginx of its own on the host).
  if [ "$(id -u)" != 0 ] || { command -v nginx >/dev/null && command -v dnsmasq >/dev/null; }; then return; fi
  echo "installing nginx and dnsmasq-base for the compose topology test"
  apt-get update -qq >/dev/null 2>&1 || true
  RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx dnsmasq-base >/dev/null
}

ensure_postgres
ensure_postgres_ssl
ensure_redis
ensure_chromium
ensure_netns_packages
./scripts/deploy-tools.sh
if ! command -v node >/dev/null; then
  echo "node is required for the interop tests: install Node.js 20 or later" >&2
  exit 1
fi
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
# The real SMTP server the mail tests deliver to (tests/smtp/sink.py).
python3 -m pip install --quiet --disable-pip-version-check 'aiosmtpd==1.4.6'
# The demo app as real Convex functions must type-check against the convex package.
npm ci --prefix examples/demo --no-audit --no-fund --loglevel=error
npm run --prefix examples/demo --silent typecheck

cargo test --workspace --locked "$@"

if [ "$(id -u)" = 0 ]; then
  cargo build --release --locked --bin convex-edge
  ./scripts/compose-netns.sh
else
  echo "not run: scripts/compose-netns.sh (the compose topology in network namespaces) needs root" >&2
fi
