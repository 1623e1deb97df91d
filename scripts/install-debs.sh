#!/usr/bin/env bash
# Installs the Debian packages Podium needs, once. As root it installs what is missing; otherwise it
# prints the command to run, and the features that need a missing package say so when used.
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || true
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "podium: missing Debian packages: ${missing[*]}" >&2
  echo "        install them with: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
fi
