package peercred

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/drover-io/drover/transports/testenv"
)

// accepted dials lis with dial and returns the server side of it.
func accepted(t *testing.T, lis net.Listener, dial func() error) net.Conn {
	t.Helper()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			ch <- nil
			return
		}
		ch <- c
	}()
	if err := dial(); err != nil {
		t.Fatal(err)
	}
	c := <-ch
	if c == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestOwnUser(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6", "unix"} {
		addr := "127.0.0.1:0"
		switch network {
		case "tcp6":
			addr = "[::1]:0"
		case "unix":
			addr = filepath.Join(t.TempDir(), "s")
		}
		lis, err := net.Listen(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer lis.Close()
		var client net.Conn
		c := accepted(t, lis, func() error { client, err = net.Dial(network, lis.Addr().String()); return err })
		defer client.Close()
		uid, err := UID(c)
		if err != nil || int(uid) != os.Geteuid() {
			t.Errorf("%s: uid %d, %v; want %d", network, uid, err, os.Geteuid())
		}
		if err := Check(c); err != nil {
			t.Errorf("%s: Check: %v", network, err)
		}
	}
}

// TestOtherUser: a loopback TCP connection from a process running as
// nobody is named as uid 65534 and refused by Check.
func TestOtherUser(t *testing.T) {
	testenv.NeedRoot(t, "connecting as the user nobody")
	testenv.NeedTools(t, "bash")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	cmd := exec.Command("bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/"+port+"; read")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := accepted(t, lis, cmd.Start)
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	uid, err := UID(c)
	if err != nil || uid != 65534 {
		t.Fatalf("uid %d, %v; want 65534", uid, err)
	}
	if err := Check(c); !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), "65534") {
		t.Errorf("Check: %v", err)
	}
}

func TestNotLocal(t *testing.T) {
	if _, err := UID(&net.TCPConn{}); err == nil {
		t.Error("a TCP connection with no addresses has a uid")
	}
	for _, bad := range []string{"", "zz:1", "0100007F", "0100007F:XYZ", "01007F:0050"} {
		if _, err := parseAddr(bad); err == nil {
			t.Errorf("parseAddr(%q) accepted", bad)
		}
	}
	a, err := parseAddr("0100007F:1F90")
	if err != nil || a.String() != "127.0.0.1:8080" {
		t.Errorf("parseAddr = %v, %v", a, err)
	}
}

// TestLocalOnly: the wrapped listener hands over this user's connection
// and drops nobody's, reporting it.
func TestLocalOnly(t *testing.T) {
	testenv.NeedRoot(t, "connecting as the user nobody")
	testenv.NeedTools(t, "bash")
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan error, 1)
	lis := LocalOnly(inner, func(_ net.Conn, err error) { refused <- err })
	defer lis.Close()
	_, port, _ := net.SplitHostPort(inner.Addr().String())
	cmd := exec.Command("bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/"+port+"; cat <&3")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var own net.Conn
	c := accepted(t, lis, func() error {
		if err := <-refused; !errors.Is(err, ErrNotAllowed) {
			return err
		}
		own, err = net.Dial("tcp", inner.Addr().String())
		return err
	})
	defer own.Close()
	if uid, err := UID(c); err != nil || int(uid) != os.Geteuid() {
		t.Errorf("accepted uid %d, %v", uid, err)
	}
	_ = cmd.Wait() // nobody's connection was closed: cat ends
}
