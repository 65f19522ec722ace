#!/usr/bin/env bash
# Prints the path of a Terraform CLI for the provider's acceptance tests:
# terraform from PATH when it is 1.11 or newer (write-only arguments and
# ephemeral resources), else OpenTofu built from its Go module source into
# .cache/tofu (about six minutes, once). Progress goes to standard error.
set -euo pipefail

MIN=1.11
TOFU_VERSION=${TOFU_VERSION:-v1.12.6}
GO=${GO:-go}
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache/tofu"

new_enough() { # version
  local major minor
  IFS=. read -r major minor _ <<<"$1"
  [ "${major:-0}" -gt 1 ] || { [ "${major:-0}" -eq 1 ] && [ "${minor:-0}" -ge "${MIN#1.}" ]; }
}

version_of() { # binary
  "$1" version -json 2>/dev/null | sed -n 's/.*"terraform_version": *"\([^"]*\)".*/\1/p' | head -1
}

for name in terraform tofu; do
  if bin=$(command -v "$name"); then
    v=$(version_of "$bin")
    if [ -n "$v" ] && new_enough "$v"; then
      echo "$bin"
      exit 0
    fi
    echo "$bin is version ${v:-unknown}, older than $MIN" >&2
  fi
done

if [ -x "$cache/tofu" ] && [ "$(cat "$cache/version" 2>/dev/null)" = "$TOFU_VERSION" ]; then
  echo "$cache/tofu"
  exit 0
fi

echo "building OpenTofu $TOFU_VERSION into $cache (once; takes a few minutes)" >&2
dir=$("$GO" mod download -json "github.com/opentofu/opentofu@$TOFU_VERSION" | sed -n 's/.*"Dir": *"\([^"]*\)".*/\1/p')
[ -n "$dir" ] || { echo "go mod download of opentofu $TOFU_VERSION failed" >&2; exit 1; }
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -R "$dir/." "$src/"
chmod -R u+w "$src"
mkdir -p "$cache"
(cd "$src" && GOFLAGS=-mod=mod "$GO" build -o "$cache/tofu" ./cmd/tofu) >&2
echo "$TOFU_VERSION" >"$cache/version"
echo "$cache/tofu"
