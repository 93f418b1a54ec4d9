// Package k8stest starts a real kube-apiserver and etcd for tests, through
// controller-runtime's envtest, with Drover's CRDs (deploy/crds) and the
// snapshot CRDs its CSI driver uses (deploy/snapshot-controller/crds,
// external-snapshotter's) installed.
// The binaries come from KUBEBUILDER_ASSETS, or the repository's bin/
// where `make k8s-bins` (run by `make test`) puts them; when they are
// missing the test stops through transports/testenv (a skip on a
// developer's machine, a failure in CI).
//
// It is test support only; nothing in the binary imports it.
package k8stest

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/transports/testenv"
)

// Namespace is where the tests put Drover's objects.
const Namespace = "drover-system"

// Env is a running API server with the CRDs installed.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *k8sruntime.Scheme
	// Kubeconfig is a kubeconfig file for processes the test starts.
	Kubeconfig string
	env        *envtest.Environment
}

// RepoRoot is the repository's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Assets is the directory holding kube-apiserver, etcd and controller-gen.
func Assets() string {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir
	}
	return filepath.Join(RepoRoot(), "bin")
}

// NeedBinary stops t (see testenv.Unavailable) unless name is in Assets.
func NeedBinary(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(Assets(), name)
	if _, err := os.Stat(path); err != nil {
		testenv.Unavailable(t, "%s not found in %s: run `make k8s-bins` (make test does)", name, Assets())
	}
	return path
}

// Scheme returns a scheme holding Kubernetes' built-in types and Drover's.
func Scheme() *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// Start starts an API server with the CRDs installed and the test
// namespace created, and stops it when t ends.
func Start(t testing.TB) *Env {
	t.Helper()
	NeedBinary(t, "kube-apiserver")
	NeedBinary(t, "etcd")
	e := &Env{Scheme: Scheme(), env: newEnvironment()}
	cfg, err := e.env.Start()
	if err != nil {
		// Start can fail after starting the processes (a CRD the API
		// server refuses): stop them rather than leave them running.
		_ = e.env.Stop()
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() {
		if err := e.env.Stop(); err != nil {
			t.Errorf("stop kube-apiserver and etcd: %v", err)
		}
	})
	e.Config = cfg
	e.Client, err = client.New(cfg, client.Options{Scheme: e.Scheme})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace %s: %v", Namespace, err)
	}
	e.Kubeconfig = writeKubeconfig(t, e.env)
	return e
}

func newEnvironment() *envtest.Environment {
	return &envtest.Environment{
		BinaryAssetsDirectory: Assets(),
		CRDDirectoryPaths: []string{
			filepath.Join(RepoRoot(), "deploy", "crds"),
			filepath.Join(RepoRoot(), "deploy", "snapshot-controller", "crds"),
		},
		ErrorIfCRDPathMissing: true,
	}
}

// writeKubeconfig writes a kubeconfig file of an administrator for
// processes the test starts.
func writeKubeconfig(t testing.TB, env *envtest.Environment) string {
	t.Helper()
	user, err := env.AddUser(envtest.User{Name: "drover-test", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatalf("add API user: %v", err)
	}
	b, err := user.KubeConfig()
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
	return path
}
