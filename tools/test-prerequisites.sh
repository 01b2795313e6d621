#!/usr/bin/env bash
# What `make test` needs beyond Python and Go, installed from Debian's packages when it is missing:
# Prometheus (the analysis tests run a real one; promtool checks the chart's rules and the dashboard) and
# Lua 5.1 and 5.4 (Argo CD runs its health and action scripts in Lua 5.1; 5.4 keeps them portable), and
# iproute2 (the local stack gives each gateway controller a network namespace of its own).
# Installs as root; anyone else is told the one command to run, and the tests are not started.
set -euo pipefail

command -v go >/dev/null || {
  echo "Go >= 1.26 is needed: the local control plane and the gateway controllers are built from Go modules." >&2
  echo "Install it from https://go.dev/dl (Debian's golang-go is too old), then run make test again." >&2
  exit 1
}

declare -A package_of=([prometheus]=prometheus [promtool]=prometheus [lua5.1]=lua5.1 [lua5.4]=lua5.4 [ip]=iproute2)
missing=()
for tool in "${!package_of[@]}"; do
  command -v "$tool" >/dev/null || missing+=("${package_of[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "The tests need: ${missing[*]}. Install them, e.g." >&2
  echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  echo "(set MTO_SKIP_PREREQUISITES=1 to run anyway: the tests that need them are then skipped, and fail under CI=true)" >&2
  [ "${MTO_SKIP_PREREQUISITES:-}" = 1 ] && exit 0
  exit 1
fi
echo "installing test prerequisites from Debian: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
