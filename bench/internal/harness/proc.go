// Package harness starts the systems the benchmarks compare as child
// processes on loopback and stops them on every exit path. It is shared by
// the commands under bench/cmd.
package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a child process whose output goes to a log file, so that a failure
// can be explained by the last lines it wrote.
type Proc struct {
	Name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

// Procs tracks every child so that all of them are stopped on any exit path.
type Procs struct {
	mu   sync.Mutex
	list []*Proc
}

// Start runs bin with args, its output in logPath and env added to this
// process's environment.
func (ps *Procs) Start(name, logPath string, env []string, bin string, args ...string) (*Proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	// A process group lets stop reach anything the server forks; Pdeathsig
	// takes the child down if this program is killed without a chance to
	// clean up (SIGKILL, OOM).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p, nil
}

// PID is the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// ExitErr returns a non-nil error once the process has exited.
func (p *Proc) ExitErr() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited (%v); last log lines:\n%s", p.Name, p.err, p.Tail(25))
	default:
		return nil
	}
}

// Tail returns the last n lines of the process's log, indented.
func (p *Proc) Tail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return "  (no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	// Some servers log whole certificates; a line this long explains
	// nothing more.
	for i, l := range lines {
		if len(l) > 300 {
			lines[i] = l[:300] + " ..."
		}
	}
	return "  | " + strings.Join(lines, "\n  | ")
}

// Stop asks the process group to terminate and kills it if it lingers, so
// that cleanup is bounded even when a server hangs on shutdown.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.PID(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
		<-p.done
	}
}

// Stop stops the given processes in parallel.
func (ps *Procs) Stop(list ...*Proc) {
	var wg sync.WaitGroup
	for _, p := range list {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop(5 * time.Second) }()
	}
	wg.Wait()
}

// StopAll stops every process started so far.
func (ps *Procs) StopAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	ps.Stop(list...)
}

// Exited describes every child that has died, to explain a failed run.
func (ps *Procs) Exited() string {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var b strings.Builder
	for _, p := range ps.list {
		if err := p.ExitErr(); err != nil {
			b.WriteString("\n" + err.Error())
		}
	}
	return b.String()
}

// FreePorts holds every listener open until all are chosen, so that the same
// port is not handed out twice.
func FreePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// WaitFor polls check until it succeeds, the timeout passes, or one of the
// watched processes exits (then its log explains why).
func WaitFor(ctx context.Context, what string, timeout time.Duration, watch []*Proc, check func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		for _, p := range watch {
			if err := p.ExitErr(); err != nil {
				return fmt.Errorf("waiting for %s: %w", what, err)
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("timed out after %v waiting for %s: %v", timeout, what, last)
			for _, p := range watch {
				msg += fmt.Sprintf("\n%s log:\n%s", p.Name, p.Tail(15))
			}
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// VMRSS reads the resident set size of pid in bytes.
func VMRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, err
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// The kernel exports it as 100 on every architecture Go supports on Linux;
// reading sysconf(_SC_CLK_TCK) would need cgo.
const clockTicks = 100

// CPUTime returns utime+stime of pid (all its threads) from /proc/<pid>/stat.
// Its resolution is one clock tick (10 ms).
func CPUTime(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces, so
	// fields are counted from the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err := strconv.ParseInt(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("utime: %w", err)
	}
	st, err := strconv.ParseInt(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stime: %w", err)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// CPUTimes sums CPUTime over the processes.
func CPUTimes(list ...*Proc) (time.Duration, error) {
	var sum time.Duration
	for _, p := range list {
		t, err := CPUTime(p.PID())
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p.Name, err)
		}
		sum += t
	}
	return sum, nil
}

// NProc is the number of CPUs this machine has.
func NProc() int { return runtime.NumCPU() }

// RuntimeProcs is GOMAXPROCS of this process.
func RuntimeProcs() int { return runtime.GOMAXPROCS(0) }

// MachineBusy is the CPU time all CPUs of the machine have spent busy
// (user, nice, system, irq, softirq, steal) since boot, from /proc/stat.
// Compared with the CPU time of the processes under test over the same
// window, it shows how much CPU other processes took.
func MachineBusy() (time.Duration, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("unexpected /proc/stat")
	}
	var busy int64
	// user nice system idle iowait irq softirq steal
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, err
		}
		busy += v
	}
	return time.Duration(busy) * time.Second / clockTicks, nil
}
