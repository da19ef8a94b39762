package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is a redis-server this run started, on a port of its own;
// it stops only that process, by PID.
type redisServer struct {
	bin, dir string
	file     string // the snapshot file it runs with: SAVE writes it
	port     int
	cmd      *exec.Cmd
}

func (r *redisServer) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

func startRedis(dir string, port int) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server is needed on PATH: %w", err)
	}
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		port = l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
	}
	r := &redisServer{bin: bin, dir: dir, port: port}
	return r, r.start("")
}

// emptyRDB is the snapshot file name a server runs with: it never exists
// when a server starts, so it starts empty; SAVE writes it.
const emptyRDB = "current.rdb"

// start runs the server on r's port, empty, or loading the snapshot file
// rdb (a name in r's directory); it writes no snapshot or AOF of its own.
func (r *redisServer) start(rdb string) error {
	file := emptyRDB
	if rdb != "" {
		file = rdb
	} else {
		_ = os.Remove(filepath.Join(r.dir, emptyRDB))
	}
	r.file = file
	r.cmd = exec.Command(r.bin, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", r.dir, "--dbfilename", file, "--logfile", filepath.Join(r.dir, "redis.log"), "--protected-mode", "no")
	if err := r.cmd.Start(); err != nil {
		return err
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", r.addr(), 100*time.Millisecond); err == nil {
			_ = c.Close()
			return nil
		}
	}
	r.kill()
	return fmt.Errorf("redis-server on %s did not start", r.addr())
}

// snapshot saves the server's data now (SAVE) and returns the snapshot's
// file name, for a later start.
func (r *redisServer) snapshot(admin *redis.Client) (string, error) {
	if err := admin.Save(context.Background()).Err(); err != nil {
		return "", err
	}
	name := fmt.Sprintf("snapshot-%d.rdb", time.Now().UnixNano())
	return name, os.Rename(filepath.Join(r.dir, r.file), filepath.Join(r.dir, name))
}

func (r *redisServer) signal(sig os.Signal) {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Signal(sig)
	}
}

// kill stops the server at once (SIGKILL) and reaps it.
func (r *redisServer) kill() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGCONT) // a stopped process must run to die cleanly
	_ = r.cmd.Process.Kill()
	_, _ = r.cmd.Process.Wait()
	r.cmd = nil
}
