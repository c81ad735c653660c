// Liveness of a recorded daemon: a process whose main thread has exited
// (a zombie leader) still holds its files while another thread runs.

package main

import (
	"bufio"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/proc"
)

// zombieLeaderEnv makes the test binary the child of
// TestAliveWhileAThreadRemains.
const zombieLeaderEnv = "QCOW2FS_TEST_ZOMBIE_LEADER"

func init() {
	if os.Getenv(zombieLeaderEnv) != "" {
		// main (and TestMain) then run on the thread group leader.
		runtime.LockOSThread()
	}
}

// runZombieLeaderChild ends the leader thread alone (exit, not exit_group)
// while another thread stays blocked reading stdin with the file named by
// the environment open; that thread exits the process when stdin closes.
func runZombieLeaderChild() {
	f, err := os.Open(os.Getenv(zombieLeaderEnv))
	if err != nil {
		os.Exit(3)
	}
	if syscall.Gettid() != os.Getpid() {
		os.Exit(4) // not on the leader: the test would prove nothing
	}
	runtime.GOMAXPROCS(2)
	started := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		close(started)
		var b [1]byte
		syscall.Read(0, b[:])
		f.Close()
		os.Exit(0)
	}()
	<-started
	os.Stdout.WriteString("ready\n")
	time.Sleep(50 * time.Millisecond) // let the reader enter read(2)
	syscall.RawSyscall(syscall.SYS_EXIT, 0, 0, 0)
}

// TestAliveWhileAThreadRemains: /proc/PID/stat shows the leader's state, Z
// once the leader thread has exited even while another thread of the
// process runs and holds its files (and so a daemon's image locks, which
// unmount promises are released). alive must say so until the last thread
// is gone.
func TestAliveWhileAThreadRemains(t *testing.T) {
	held, err := os.CreateTemp(t.TempDir(), "held")
	if err != nil {
		t.Fatal(err)
	}
	held.Close()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), zombieLeaderEnv+"="+held.Name())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("child: %q, %v", line, err)
	}
	pid := cmd.Process.Pid
	_, start, err := proc.Stat(pid)
	if err != nil {
		t.Fatal(err)
	}
	st := &runState{PID: pid, StartTime: start}
	if err := waitFor(10*time.Second, func() bool { s, _, _ := proc.Stat(pid); return s == "Z" }); err != nil {
		t.Fatal("the child's leader thread never became a zombie")
	}
	if !st.alive() {
		t.Error("alive says a process with a running thread (holding a file open) is gone")
	}
	stdin.Close() // the remaining thread exits the process
	if err := waitFor(10*time.Second, func() bool { return !st.alive() }); err != nil {
		t.Error("alive still says the child runs after all its threads exited")
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("child: %v", err)
	}
}
