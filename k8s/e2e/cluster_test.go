package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/drover-io/drover/k8s/csi"
)

// cluster is a single-node Kubernetes run from root: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, containerd
// (Debian's, with runc and the CNI plugins) and a kubelet, each a
// process whose PID is in root/NAME.pid.
type cluster struct {
	root    string // state: certificates, data, logs, PID files
	bin     string // the repository's bin/
	node    string // the node's name
	apiPort int
	ports   map[string]int
	// loopsBefore are the loop devices attached before the cluster
	// started: the ones attached since are the cluster's.
	loopsBefore map[string]bool
	config      *rest.Config
}

// processes in the order they start; teardown stops them in reverse.
var processes = []string{"containerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"}

const (
	adminToken = "e2e-admin-token"
	bridgeName = "drovere2e0"
	podSubnet  = "10.244.77.0/24"
)

func (c *cluster) path(parts ...string) string {
	return filepath.Join(append([]string{c.root}, parts...)...)
}

func (c *cluster) containerdSock() string { return c.path("containerd", "containerd.sock") }

// freePort asks the kernel for a free TCP port on loopback.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// writeFile writes a file under root, failing t on an error.
func (c *cluster) writeFile(t *testing.T, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := c.path(name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// pki writes a CA, the API server's serving certificate, the service
// account signing key pair, static tokens for the components and the
// administrator, and a kubeconfig for each.
func (c *cluster) pki(t *testing.T) {
	t.Helper()
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "drover-e2e-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pemOf := func(typ string, b []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}) }
	caPEM := pemOf("CERTIFICATE", caDER)
	c.writeFile(t, "pki/ca.crt", caPEM, 0o644)
	c.writeFile(t, "pki/apiserver.crt", pemOf("CERTIFICATE", srvDER), 0o644)
	c.writeFile(t, "pki/apiserver.key", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(srvKey)), 0o600)
	c.writeFile(t, "pki/sa.key", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)), 0o600)
	c.writeFile(t, "pki/sa.pub", pemOf("PUBLIC KEY", saPub), 0o644)
	users := []struct{ file, token, user, uid, groups string }{
		{"admin", adminToken, "e2e-admin", "1", "system:masters"},
		{"kubelet", "e2e-node-token", "system:node:" + c.node, "2", "system:nodes"},
		{"scheduler", "e2e-scheduler-token", "system:kube-scheduler", "3", ""},
		{"kcm", "e2e-kcm-token", "system:kube-controller-manager", "4", ""},
	}
	var tokens bytes.Buffer
	for _, u := range users {
		fmt.Fprintf(&tokens, "%s,%s,%s,%q\n", u.token, u.user, u.uid, u.groups)
		c.writeFile(t, "pki/"+u.file+".kubeconfig", []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://127.0.0.1:%d", certificate-authority: %s}
users:
- name: u
  user: {token: %s}
contexts:
- name: e2e
  context: {cluster: e2e, user: u}
current-context: e2e
`, c.apiPort, c.path("pki", "ca.crt"), u.token)), 0o600)
	}
	c.writeFile(t, "pki/tokens.csv", tokens.Bytes(), 0o600)
	c.config = &rest.Config{
		Host:            fmt.Sprintf("https://127.0.0.1:%d", c.apiPort),
		BearerToken:     adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: caPEM},
		QPS:             50, Burst: 100,
	}
}

// configure writes containerd's, the kubelet's and the CNI configuration.
func (c *cluster) configure(t *testing.T) {
	t.Helper()
	r := c.root
	c.writeFile(t, "containerd/config.toml", []byte(fmt.Sprintf(`version = 2
root = "%[1]s/containerd/root"
state = "%[1]s/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "%[1]s/containerd/containerd.sock"
[ttrpc]
  address = "%[1]s/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "local.test/pause:1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "%[1]s/cni/net.d"
`, r)), 0o644)
	// The node is Ready only with a CNI configuration: a bridge with
	// host-local addresses, no gateway (the Pods need no network; Drover's
	// own Pods are on the host's).
	c.writeFile(t, "cni/net.d/10-bridge.conflist", []byte(fmt.Sprintf(`{"cniVersion":"0.4.0","name":"drovere2e","plugins":[
 {"type":"bridge","bridge":%q,"isGateway":false,"ipMasq":false,"hairpinMode":false,
  "ipam":{"type":"host-local","ranges":[[{"subnet":%q}]],"dataDir":"%s/cni/ipam"}},
 {"type":"loopback"}]}
`, bridgeName, podSubnet, r)), 0o644)
	c.writeFile(t, "kubelet-config.yaml", []byte(fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%[1]s/containerd/containerd.sock
podLogsDir: %[1]s/pod-logs
address: 127.0.0.1
port: %[2]d
healthzBindAddress: 127.0.0.1
healthzPort: %[3]d
readOnlyPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
  nodefs.inodesFree: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: /etc/resolv.conf
clusterDNS: []
syncFrequency: 5s
fileCheckFrequency: 5s
`, r, c.ports["kubelet"], c.ports["kubelet-healthz"])), 0o644)
}

// start starts a process with its output in root/logs/NAME.log and its
// PID in root/NAME.pid. The process is in its own process group, so that
// the test's signals do not reach it; teardown stops it.
func (c *cluster) start(t *testing.T, name string, args ...string) {
	t.Helper()
	logf, err := os.OpenFile(c.path("logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	c.writeFile(t, name+".pid", []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	// Reap it when it exits, so that teardown sees it gone.
	go func() { _ = cmd.Wait() }()
}

// waitFor polls cond until it returns true, failing t after timeout with
// the last error and the tail of the named log.
func (c *cluster) waitFor(t *testing.T, what string, timeout time.Duration, logName string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		if logName != "" && !c.running(logName) {
			t.Fatalf("%s: %s exited:\n%s", what, logName, c.logTail(logName, 30))
		}
		time.Sleep(250 * time.Millisecond)
	}
	tail := ""
	if logName != "" {
		tail = c.logTail(logName, 30)
	}
	t.Fatalf("%s: not after %s: %v\n%s", what, timeout, err, tail)
}

// running says whether the process of root/NAME.pid is alive.
func (c *cluster) running(name string) bool {
	pid := readPID(c.path(name + ".pid"))
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// logTail is the last n lines of root/logs/NAME.log.
func (c *cluster) logTail(name string, n int) string {
	b, _ := os.ReadFile(c.path("logs", name+".log"))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "--- " + name + " log:\n" + strings.Join(lines, "\n")
}

// up starts containerd, etcd, the API server (waiting for /readyz), the
// controller manager, the scheduler and the kubelet.
func (c *cluster) up(t *testing.T) {
	t.Helper()
	for _, d := range []string{"logs", "etcd", "kubelet", "pod-logs", "drover"} {
		if err := os.MkdirAll(c.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c.start(t, "containerd", "containerd", "--config", c.path("containerd", "config.toml"))
	c.waitFor(t, "containerd", 30*time.Second, "containerd", func() error {
		return exec.Command("ctr", "-a", c.containerdSock(), "version").Run()
	})
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", c.ports["etcd"])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", c.ports["etcd-peer"])
	c.start(t, "etcd", filepath.Join(c.bin, "etcd"), "--data-dir", c.path("etcd"), "--name", "e2e",
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL, "--initial-cluster", "e2e="+peerURL,
		"--listen-metrics-urls", fmt.Sprintf("http://127.0.0.1:%d", c.ports["etcd-metrics"]))
	c.waitFor(t, "etcd", 30*time.Second, "etcd", func() error {
		resp, err := http.Get(etcdURL + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	p := func(f string) string { return c.path("pki", f) }
	c.start(t, "kube-apiserver", filepath.Join(c.bin, "kube-apiserver"), "--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", strconv.Itoa(c.apiPort),
		"--endpoint-reconciler-type", "none", "--allow-privileged=true",
		"--tls-cert-file", p("apiserver.crt"), "--tls-private-key-file", p("apiserver.key"),
		"--client-ca-file", p("ca.crt"), "--token-auth-file", p("tokens.csv"),
		"--authorization-mode", "Node,RBAC", "--service-cluster-ip-range", "10.96.0.0/24",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", p("sa.pub"), "--service-account-signing-key-file", p("sa.key"))
	// The controller manager starts only once the API server is ready:
	// before that its RBAC bootstrap races it.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: x509.NewCertPool()}}
	caPEM, _ := os.ReadFile(p("ca.crt"))
	tr.TLSClientConfig.RootCAs.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	c.waitFor(t, "kube-apiserver /readyz", 120*time.Second, "kube-apiserver", func() error {
		req, _ := http.NewRequest("GET", c.config.Host+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil
	})
	kcm := p("kcm.kubeconfig")
	c.start(t, "kube-controller-manager", filepath.Join(c.bin, "kube-controller-manager"),
		"--kubeconfig", kcm, "--authentication-kubeconfig", kcm, "--authorization-kubeconfig", kcm,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(c.ports["kcm"]),
		"--service-account-private-key-file", p("sa.key"), "--root-ca-file", p("ca.crt"),
		"--use-service-account-credentials", "--controllers", "*", "--leader-elect=false")
	sched := p("scheduler.kubeconfig")
	c.start(t, "kube-scheduler", filepath.Join(c.bin, "kube-scheduler"),
		"--kubeconfig", sched, "--authentication-kubeconfig", sched, "--authorization-kubeconfig", sched,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(c.ports["scheduler"]), "--leader-elect=false")
	c.start(t, "kubelet", filepath.Join(c.bin, "kubelet"), "--config", c.path("kubelet-config.yaml"),
		"--root-dir", c.path("kubelet"), "--hostname-override", c.node, "--kubeconfig", p("kubelet.kubeconfig"), "--v=2")
}

// teardown stops everything started from root, by PID file (a run that
// was killed is cleaned up by the next): Pods' containers through
// containerd, then the processes in reverse order, then the mounts under
// root, the bridge and the kubepods cgroups. It reports what it could not
// undo.
func teardown(root string) []string {
	var problems []string
	ctr := func(args ...string) ([]byte, error) {
		return exec.Command("ctr", append([]string{"-a", filepath.Join(root, "containerd", "containerd.sock"), "-n", "k8s.io"}, args...)...).Output()
	}
	stop := func(name string, sig syscall.Signal, wait time.Duration) {
		pid := readPID(filepath.Join(root, name+".pid"))
		if pid <= 0 || syscall.Kill(pid, 0) != nil {
			return
		}
		_ = syscall.Kill(pid, sig)
		deadline := time.Now().Add(wait)
		for time.Now().Before(deadline) && syscall.Kill(pid, 0) == nil {
			time.Sleep(100 * time.Millisecond)
		}
		if syscall.Kill(pid, 0) == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			time.Sleep(200 * time.Millisecond)
		}
	}
	// The kubelet first, so that it restarts nothing; then every container.
	stop("kubelet", syscall.SIGTERM, 10*time.Second)
	if out, err := ctr("tasks", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(string(out)) {
			_, _ = ctr("tasks", "kill", "-s", "KILL", id)
		}
		time.Sleep(time.Second)
		if out, err := ctr("containers", "ls", "-q"); err == nil {
			for _, id := range strings.Fields(string(out)) {
				_, _ = ctr("tasks", "delete", "-f", id)
				_, _ = ctr("containers", "delete", id)
			}
		}
	}
	// Shims exit when their tasks are deleted; kill any left by PID file.
	shims, _ := filepath.Glob(filepath.Join(root, "containerd", "state", "io.containerd.runtime.v2.task", "*", "*", "shim.pid"))
	for _, f := range shims {
		if pid := readPID(f); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for i := len(processes) - 1; i >= 0; i-- {
		stop(processes[i], syscall.SIGTERM, 15*time.Second)
	}
	// Volume attachments (nbdfuse and its NBD relay) the CSI node
	// service started outside its container, in a cgroup of their own,
	// which a failed run may leave.
	for _, pid := range attachmentProcesses() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// Mounts under root, deepest first (Pods' volumes, overlay rootfs,
	// the kubelet's tmpfs and CSI mounts, FUSE files).
	mounts := mountsUnder(root)
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		if err := syscall.Unmount(m, 0); err != nil {
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
				problems = append(problems, fmt.Sprintf("unmount %s: %v", m, err))
			}
		}
	}
	_ = exec.Command("ip", "link", "del", bridgeName).Run()
	for _, d := range []string{"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "hugetlb", "net_cls", "net_prio", "perf_event", "systemd"} {
		removeCgroupTree(filepath.Join("/sys/fs/cgroup", d, "kubepods"))
	}
	for _, d := range attachmentCgroups() {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			problems = append(problems, fmt.Sprintf("remove cgroup %s: %v", d, err))
		}
	}
	return problems
}

// attachmentCgroups are the directories of csi.AttachCgroup, the cgroup
// the CSI node service (--host-attach) starts volumes' nbdfuse in.
func attachmentCgroups() []string {
	a, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", csi.AttachCgroup))
	b, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", csi.AttachCgroup))
	return append(a, b...)
}

// attachmentProcesses lists the processes in csi.AttachCgroup.
func attachmentProcesses() []int {
	seen := map[int]bool{}
	var out []int
	for _, d := range attachmentCgroups() {
		b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
				seen[pid] = true
				out = append(out, pid)
			}
		}
	}
	sort.Ints(out)
	return out
}

// attachedLoops lists the attached loop devices (loopN with a backing file).
func attachedLoops() map[string]bool {
	out := map[string]bool{}
	dirs, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range dirs {
		out[filepath.Base(filepath.Dir(filepath.Dir(f)))] = true
	}
	return out
}

// newLoops lists the loop devices attached since the cluster started.
func (c *cluster) newLoops() []string {
	var out []string
	for l := range attachedLoops() {
		if !c.loopsBefore[l] {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return out
}

// mountsUnder lists the mount points at or below root.
func mountsUnder(root string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			mp := strings.ReplaceAll(f[4], `\040`, " ")
			if mp == root || strings.HasPrefix(mp, root+"/") {
				out = append(out, mp)
			}
		}
	}
	return out
}

// removeCgroupTree removes a cgroup v1 directory tree, deepest first.
func removeCgroupTree(dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Remove(dirs[i])
	}
}

// newCluster prepares a cluster in root, first tearing down whatever a
// previous run left there, and registers its teardown with t.
func newCluster(t *testing.T, root, bin string) *cluster {
	t.Helper()
	if _, err := os.Stat(root); err == nil {
		if problems := teardown(root); len(problems) > 0 {
			t.Fatalf("tear down the previous run in %s: %v", root, problems)
		}
		if err := os.RemoveAll(root); err != nil {
			t.Fatalf("remove the previous run's %s: %v", root, err)
		}
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	// Bidirectional mount propagation (the kubelet's and Drover's
	// directories in the agent's Pod) needs a shared mount; the host's /
	// may be private, so root becomes a shared mount of its own, which
	// teardown unmounts with everything under it.
	if err := syscall.Mount(root, root, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		t.Fatalf("bind-mount %s: %v", root, err)
	}
	if err := syscall.Mount("", root, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
		t.Fatalf("make %s a shared mount: %v", root, err)
	}
	c := &cluster{root: root, bin: bin, node: "e2e-node", ports: map[string]int{}, loopsBefore: attachedLoops()}
	for _, p := range []string{"etcd", "etcd-peer", "etcd-metrics", "kcm", "scheduler", "kubelet", "kubelet-healthz"} {
		c.ports[p] = freePort(t)
	}
	c.apiPort = freePort(t)
	return c
}
