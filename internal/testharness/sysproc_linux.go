package testharness

import (
	"os/exec"
	"syscall"
)

// setSysProcAttr makes the kernel kill a server if the test binary dies
// without running its cleanups (a panic, a timeout, Ctrl-C).
func setSysProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
