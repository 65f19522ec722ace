//go:build !linux

package testharness

import "os/exec"

func setSysProcAttr(*exec.Cmd) {}
