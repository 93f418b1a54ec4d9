package pluginreg

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// dialKubelet connects to the registration socket the way the kubelet's
// plugin watcher does: gRPC over the unix socket, no TLS.
func dialKubelet(t *testing.T, sock string) registerapi.RegistrationClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	t.Cleanup(func() { conn.Close() })
	return registerapi.NewRegistrationClient(conn)
}

// waitForSocket waits until sock exists (Serve runs in a goroutine).
func waitForSocket(t *testing.T, sock string, errc <-chan error) {
	t.Helper()
	for {
		if _, err := os.Stat(sock); err == nil {
			return
		}
		select {
		case err := <-errc:
			t.Fatalf("Serve returned before listening: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestRegistrationOverUnixSocket(t *testing.T) {
	dir := t.TempDir()
	registry := filepath.Join(dir, "plugins_registry")
	// A crashed driver's socket is in the way: Serve replaces it.
	if err := os.MkdirAll(registry, 0o750); err != nil {
		t.Fatal(err)
	}
	stale, err := net.Listen("unix", SocketPath(registry, "driver.drover.io"))
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- Serve(ctx, registry, "driver.drover.io", "unix:///var/lib/kubelet/plugins/driver.drover.io/csi.sock", nil)
	}()
	sock := SocketPath(registry, "driver.drover.io")
	waitForSocket(t, sock, errc)
	c := dialKubelet(t, sock)

	info, err := c.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatalf("GetInfo: %v", err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "driver.drover.io" ||
		info.Endpoint != "/var/lib/kubelet/plugins/driver.drover.io/csi.sock" ||
		strings.Join(info.SupportedVersions, ",") != "1.0.0" {
		t.Errorf("GetInfo = %+v", info)
	}
	for _, st := range []*registerapi.RegistrationStatus{
		{PluginRegistered: true},
		{PluginRegistered: false, Error: "plugin validation failed"},
	} {
		if _, err := c.NotifyRegistrationStatus(ctx, st); err != nil {
			t.Errorf("NotifyRegistrationStatus(%v): %v", st, err)
		}
	}

	cancel()
	if err := <-errc; err != nil {
		t.Errorf("Serve: %v", err)
	}
	// The socket is gone, so the kubelet deregisters the driver.
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind after Serve returned: %v", err)
	}
}

func TestVersionsAndPlainPathEndpoint(t *testing.T) {
	registry := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- Serve(ctx, registry, "other.example.com", "/run/csi/csi.sock", []string{"1.5.0", "1.0.0"})
	}()
	sock := SocketPath(registry, "other.example.com")
	waitForSocket(t, sock, errc)
	info, err := dialKubelet(t, sock).GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatalf("GetInfo: %v", err)
	}
	if info.Name != "other.example.com" || info.Endpoint != "/run/csi/csi.sock" || strings.Join(info.SupportedVersions, ",") != "1.5.0,1.0.0" {
		t.Errorf("GetInfo = %+v", info)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	long := filepath.Join(dir, strings.Repeat("d", 120))
	for _, tc := range []struct {
		registry, driver, endpoint, want string
	}{
		{dir, "", "/csi.sock", "driver name"},
		{dir, "a/b", "/csi.sock", "driver name"},
		{dir, "d.example.com", "csi.sock", "CSI endpoint"},
		{dir, "d.example.com", "tcp://1.2.3.4:5", "CSI endpoint"},
		{"relative/dir", "d.example.com", "/csi.sock", "not an absolute path"},
		{long, "d.example.com", "/csi.sock", "longer than a unix socket address"},
	} {
		err := Serve(context.Background(), tc.registry, tc.driver, tc.endpoint, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Serve(%q, %q, %q) = %v, want an error about %s", tc.registry, tc.driver, tc.endpoint, err, tc.want)
		}
	}
}
