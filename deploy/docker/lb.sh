#!/bin/sh
# lb's entrypoint: nginx in front of the gateways, reloaded (gracefully: in-flight requests
# finish on the old workers) whenever the addresses of `gateway` change, because nginx before
# 1.27.3 resolves an upstream name only when it loads its configuration. SIGTERM stops nginx
# gracefully (`nginx -s quit`).
set -u
addresses() { getent ahostsv4 gateway | awk '{print $1}' | sort -u | tr '\n' ' '; }

nginx -g 'daemon off;' &
nginx_pid=$!
trap 'nginx -s quit; wait "$nginx_pid"; exit 0' TERM INT
current=$(addresses)
while kill -0 "$nginx_pid" 2>/dev/null; do
  sleep 1 &
  wait $!
  next=$(addresses)
  if [ -n "$next" ] && [ "$next" != "$current" ]; then
    echo "lb: gateway addresses now $next; reloading nginx" >&2
    nginx -s reload && current=$next
  fi
done
wait "$nginx_pid"
