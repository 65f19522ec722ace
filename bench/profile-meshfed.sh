#!/usr/bin/env bash
# Profiles the meshfed servers under svidbench's load. The server exposes no
# profiling endpoint, so this builds the meshfed command tree with a Go CPU
# profile around it (a main package added through `go build -overlay`, so
# the work tree is not touched and the main module's dependencies are used),
# runs svidbench against it, and prints `go tool pprof -top` of each server.
#
#   bench/profile-meshfed.sh [svidbench flags...]
#
# Default flags: -skip-stepca -skip-storm -levels 64 -runs 1 -duration 5s.
# Profiles cover each server's whole life (start, setup of the workloads,
# the measured load); they stay in the printed directory.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-go}
out=$(mktemp -d /tmp/meshfed-profile-XXXXXX)
src="$out/src"
mkdir -p "$src" "$out/prof"

cat >"$src/main.go" <<'EOF'
// meshfed with a CPU profile of the whole process, written to
// $MESHFED_CPUPROFILE_DIR/cpu-<pid>.prof when it exits.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"

	"github.com/meshfed/meshfed/internal/cli"
)

func main() { os.Exit(run()) }

func run() int {
	if dir := os.Getenv("MESHFED_CPUPROFILE_DIR"); dir != "" && len(os.Args) > 1 && os.Args[1] == "server" {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("cpu-%d.prof", os.Getpid())))
		if err != nil {
			fmt.Fprintln(os.Stderr, "meshfedprof:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "meshfedprof:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	return cli.Execute(cli.NewRootCommand(os.Stdout, os.Stderr))
}
EOF
printf '{"Replace":{"%s/cmd/meshfedprof/main.go":"%s/main.go"}}\n' "$root" "$src" >"$out/overlay.json"
(cd "$root" && "$GO" build -tags hashicorpmetrics -overlay "$out/overlay.json" -o "$out/meshfedprof" ./cmd/meshfedprof)

flags=("$@")
if [ ${#flags[@]} -eq 0 ]; then
	flags=(-skip-stepca -skip-storm -levels 64 -runs 1 -duration 5s)
fi
(cd "$root/bench" && MESHFED_CPUPROFILE_DIR="$out/prof" "$GO" run ./cmd/svidbench -meshfed-bin "$out/meshfedprof" "${flags[@]}")

for p in "$out"/prof/cpu-*.prof; do
	echo
	echo "== $p"
	"$GO" tool pprof -top -nodecount=40 "$out/meshfedprof" "$p" 2>/dev/null
done
echo
echo "profiles and binary in $out (e.g. $GO tool pprof -top -cum $out/meshfedprof $out/prof/cpu-*.prof)"
