#!/usr/bin/env bash
# Installs what `make bench` compares meshfed against: Debian's etcd (server
# and etcdctl) and HAProxy, and smallstep's step-ca, built from source into
# bin/tools.
# Safe to run again; does nothing for what is already present.
# The Go client in bench/go.mod (go.etcd.io/etcd/client/v3 v3.5.x) is chosen
# for the server Debian ships (bookworm: 3.4.23): etcd supports clients one
# minor version ahead of the server, and 3.5 builds with the gRPC meshfed uses.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-go}
STEP_CA_VERSION=v0.30.2

# step-ca, pinned, through the Go module proxy. Pure Go (CGO_ENABLED=0): no
# PKCS#11 or YubiKey support, which the bench does not use. A binary of
# another version (read from its build info) is replaced.
stepca_version() {
	"$GO" version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'
}
if [ ! -x "$root/bin/tools/step-ca" ] || [ "$(stepca_version "$root/bin/tools/step-ca")" != "$STEP_CA_VERSION" ]; then
	echo "installing step-ca $STEP_CA_VERSION into bin/tools" >&2
	CGO_ENABLED=0 GOBIN="$root/bin/tools" "$GO" install "github.com/smallstep/certificates/cmd/step-ca@$STEP_CA_VERSION"
fi

pkgs=(etcd-server etcd-client haproxy)

installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()
for p in "${pkgs[@]}"; do
	installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
	sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
# The packages enable a single-member etcd service and an HAProxy service;
# where a service manager starts them, stop them so they take no CPU from the
# measured processes (the benchmarks run their own, in the foreground).
if command -v systemctl >/dev/null 2>&1; then
	for unit in etcd haproxy; do
		if systemctl is-active --quiet "$unit" 2>/dev/null; then
			"${sudo[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true
		fi
	done
fi
etcd --version | head -n 1
haproxy -v | head -n 1
