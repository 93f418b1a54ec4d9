// Package pluginreg registers a CSI driver with the kubelet the way
// node-driver-registrar does (which the Go module proxy does not serve):
// it serves the kubelet's plugin registration API
// (k8s.io/kubelet/pkg/apis/pluginregistration/v1) on a unix socket in the
// kubelet's plugins_registry directory. The kubelet's plugin watcher finds
// the socket, calls GetInfo to learn the driver's name and CSI endpoint,
// connects to that endpoint (NodeGetInfo), and reports the outcome with
// NotifyRegistrationStatus; the driver then appears in the node's CSINode
// object and the kubelet sends it NodeStage/NodePublish calls.
//
// The socket's name is DRIVER-reg.sock. Serve removes a stale socket of
// that name before listening (a crashed agent leaves one) and its own
// socket when it returns, which is how the kubelet learns the driver went
// away.
package pluginreg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// DefaultVersions is the CSI versions a driver reports when none are given
// (what node-driver-registrar reports for a CSI v1 driver).
var DefaultVersions = []string{"1.0.0"}

// maxSocketPath is the longest path a unix socket address holds on Linux
// (sun_path is 108 bytes with its terminating NUL).
const maxSocketPath = 107

// SocketPath is where Serve listens for driverName in registryDir.
func SocketPath(registryDir, driverName string) string {
	return filepath.Join(registryDir, driverName+"-reg.sock")
}

// Serve registers driverName, whose CSI node service listens on
// csiEndpoint (a path as the kubelet sees it, or a unix:// URL), with the
// kubelet that watches registryDir, and answers the kubelet until ctx
// ends. Every registration outcome the kubelet reports is logged; a
// refusal is logged as an error (the kubelet retries when the socket is
// created again, e.g. when the driver restarts).
func Serve(ctx context.Context, registryDir, driverName, csiEndpoint string, versions []string) error {
	srv, lis, err := listen(registryDir, driverName, csiEndpoint, versions)
	if err != nil {
		return err
	}
	gs := grpc.NewServer()
	registerapi.RegisterRegistrationServer(gs, srv)
	done := make(chan error, 1)
	go func() { done <- gs.Serve(lis) }()
	select {
	case <-ctx.Done():
		gs.Stop()
		<-done
		// Stop closed the listener, which removed the socket file; make
		// sure, so that the kubelet deregisters the driver.
		_ = os.Remove(lis.Addr().String())
		return nil
	case err := <-done:
		_ = os.Remove(lis.Addr().String())
		return fmt.Errorf("plugin registration server for %s: %w", driverName, err)
	}
}

// listen checks the arguments and listens on the registration socket.
func listen(registryDir, driverName, csiEndpoint string, versions []string) (*server, net.Listener, error) {
	if driverName == "" || strings.ContainsAny(driverName, "/\x00") {
		return nil, nil, fmt.Errorf("plugin registration: driver name %q: want a non-empty name without '/'", driverName)
	}
	endpoint := strings.TrimPrefix(csiEndpoint, "unix://")
	if !filepath.IsAbs(endpoint) {
		return nil, nil, fmt.Errorf("plugin registration of %s: CSI endpoint %q: want an absolute socket path or unix:///path", driverName, csiEndpoint)
	}
	if len(versions) == 0 {
		versions = DefaultVersions
	}
	if !filepath.IsAbs(registryDir) {
		return nil, nil, fmt.Errorf("plugin registration of %s: registry directory %q is not an absolute path", driverName, registryDir)
	}
	sock := SocketPath(registryDir, driverName)
	if len(sock) > maxSocketPath {
		return nil, nil, fmt.Errorf("plugin registration of %s: socket path %s is %d bytes, longer than a unix socket address holds (%d)", driverName, sock, len(sock), maxSocketPath)
	}
	if err := os.MkdirAll(registryDir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("plugin registration of %s: %w", driverName, err)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("plugin registration of %s: remove stale socket: %w", driverName, err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return nil, nil, fmt.Errorf("plugin registration of %s: %w", driverName, err)
	}
	return &server{info: registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              driverName,
		Endpoint:          endpoint,
		SupportedVersions: versions,
	}}, lis, nil
}

// server answers the kubelet's registration calls.
type server struct {
	registerapi.UnimplementedRegistrationServer
	info registerapi.PluginInfo
}

func (s *server) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	info := registerapi.PluginInfo{
		Type:              s.info.Type,
		Name:              s.info.Name,
		Endpoint:          s.info.Endpoint,
		SupportedVersions: append([]string(nil), s.info.SupportedVersions...),
	}
	return &info, nil
}

func (s *server) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if st.GetPluginRegistered() {
		slog.Info("registered with the kubelet", "driver", s.info.Name, "endpoint", s.info.Endpoint)
	} else {
		slog.Error("the kubelet refused the driver's registration", "driver", s.info.Name, "endpoint", s.info.Endpoint, "error", st.GetError())
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}
