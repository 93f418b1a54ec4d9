package manager_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
	"github.com/drover-io/drover/k8s/manager"
)

// TestWebhookRefusesAgainstTheAPIServer runs the manager with its webhook
// on 127.0.0.1 and installs deploy/manifests' ValidatingWebhookConfiguration
// with its service reference turned into that address: the manager
// generates the CA and certificate into a Secret and writes the CA into
// the configuration, and the real API server calls the webhook. Deleting
// a Node that holds a replica, removing its disk, and deleting a
// BackingImage a volume uses are refused with a message naming the
// volume; once the volume is gone all three go through. A second
// manager serves the same certificate, read from the Secret.
func TestWebhookRefusesAgainstTheAPIServer(t *testing.T) {
	env := k8stest.Start(t)
	c := env.Client
	ctx, cancel := context.WithCancel(context.Background())
	grace := &v1alpha1.Setting{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.SettingNodeDownGracePeriod, Namespace: k8stest.Namespace}, Value: "1h"}
	if err := c.Create(ctx, grace); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	mgr, err := manager.New(env.Config, manager.Config{Namespace: k8stest.Namespace, Resync: 200 * time.Millisecond,
		Webhook: manager.WebhookConfig{Port: port, Host: "127.0.0.1", Hosts: []string{"127.0.0.1"},
			ConfigurationName: "drover-webhook"}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	installWebhookConfiguration(t, c, fmt.Sprintf("https://127.0.0.1:%d", port))
	eventually(t, "the manager writes its CA into the configuration", func() (bool, string) {
		var vwc admissionregistrationv1.ValidatingWebhookConfiguration
		if err := c.Get(ctx, types.NamespacedName{Name: "drover-webhook"}, &vwc); err != nil {
			return false, err.Error()
		}
		var s corev1.Secret
		if err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "drover-webhook-tls"}, &s); err != nil {
			return false, err.Error()
		}
		for _, w := range vwc.Webhooks {
			if len(w.ClientConfig.CABundle) == 0 || !bytes.Equal(w.ClientConfig.CABundle, s.Data["ca.crt"]) {
				return false, "caBundle not set on " + w.Name
			}
		}
		return true, ""
	})

	// A second manager copy, not the leader (another holds its Lease),
	// serves the same certificate, from the Secret the first created.
	now := metav1.NewMicroTime(time.Now())
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "drover-manager", Namespace: k8stest.Namespace},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr("another-manager"), LeaseDurationSeconds: ptr(int32(3600)),
			AcquireTime: &now, RenewTime: &now}}
	if err := c.Create(ctx, lease); err != nil {
		t.Fatal(err)
	}
	port2 := freePort(t)
	ctx2, cancel2 := context.WithCancel(ctx)
	mgr2, err := manager.New(env.Config, manager.Config{Namespace: k8stest.Namespace, LeaderElection: true,
		Webhook: manager.WebhookConfig{Port: port2, Host: "127.0.0.1", Hosts: []string{"127.0.0.1"}}})
	if err != nil {
		t.Fatal(err)
	}
	done2 := make(chan error, 1)
	go func() { done2 <- mgr2.Start(ctx2) }()
	var s corev1.Secret
	if err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "drover-webhook-tls"}, &s); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.Data["ca.crt"])
	for _, p := range []int{port, port2} {
		eventually(t, fmt.Sprintf("the webhook on port %d serves the Secret's certificate", p), func() (bool, string) {
			conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p), &tls.Config{RootCAs: pool})
			if err != nil {
				return false, err.Error()
			}
			defer conn.Close()
			block, _ := pem.Decode(s.Data["tls.crt"])
			return bytes.Equal(conn.ConnectionState().PeerCertificates[0].Raw, block.Bytes), "another certificate"
		})
	}
	cancel2()
	if err := <-done2; err != nil {
		t.Errorf("second manager: %v", err)
	}

	addNode(t, c, "a", 100*gib)
	img := &v1alpha1.BackingImage{ObjectMeta: metav1.ObjectMeta{Name: "base", Namespace: k8stest.Namespace},
		Spec: v1alpha1.BackingImageSpec{URL: "http://images.invalid/base.raw"}}
	if err := c.Create(ctx, img); err != nil {
		t.Fatal(err)
	}
	one := int32(1)
	vol := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "v", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: gib, NumberOfReplicas: &one, BackingImage: "base"}}
	if err := c.Create(ctx, vol); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the replica on node a", func() (bool, string) {
		nodes := replicaNodes(t, c, "v")
		return strings.Join(nodes, ",") == "a", fmt.Sprint(nodes)
	})
	node := func() *v1alpha1.Node {
		var n v1alpha1.Node
		if err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "a"}, &n); err != nil {
			t.Fatal(err)
		}
		return &n
	}

	// The node's deletion is refused, naming the volume (once the
	// webhook server is listening).
	eventually(t, "deleting node a refused", func() (bool, string) {
		err := c.Delete(ctx, node())
		if err == nil {
			t.Fatal("node a deleted")
		}
		return strings.Contains(err.Error(), "denied the request: node a still holds 1 replica(s) of volume(s) v"), err.Error()
	})
	// So is removing the disk holding the replica; other spec changes
	// are not.
	n := node()
	patch := client.MergeFrom(n.DeepCopy())
	delete(n.Spec.Disks, "default")
	err = c.Patch(ctx, n, patch)
	if err == nil || !strings.Contains(err.Error(), "spec.disks[default] of node a holds 1 replica(s) of volume(s) v") {
		t.Fatalf("removing node a's disk: %v", err)
	}
	n = node()
	patch = client.MergeFrom(n.DeepCopy())
	n.Spec.Tags = []string{"fast"}
	if err := c.Patch(ctx, n, patch); err != nil {
		t.Fatalf("tagging node a: %v", err)
	}
	// And deleting the image the volume is on.
	err = c.Delete(ctx, img)
	if err == nil || !strings.Contains(err.Error(), "backing image base is used by volume(s) v") {
		t.Fatalf("deleting backing image base: %v", err)
	}

	// Once the volume is gone (no agent holds its replica here), all go.
	if err := c.Delete(ctx, vol); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the volume and its replica gone", func() (bool, string) {
		err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "v"}, &v1alpha1.Volume{})
		return client.IgnoreNotFound(err) == nil && err != nil && len(replicaNodes(t, c, "v")) == 0, fmt.Sprint(err)
	})
	if err := c.Delete(ctx, img); err != nil {
		t.Fatalf("deleting the unused backing image: %v", err)
	}
	if err := c.Delete(ctx, node()); err != nil {
		t.Fatalf("deleting the empty node: %v", err)
	}
	eventually(t, "node a gone", func() (bool, string) {
		err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "a"}, &v1alpha1.Node{})
		return client.IgnoreNotFound(err) == nil && err != nil, fmt.Sprint(err)
	})
}

// installWebhookConfiguration creates deploy/manifests'
// ValidatingWebhookConfiguration with each webhook's service reference
// replaced by base and its path.
func installWebhookConfiguration(t *testing.T, c client.Client, base string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(k8stest.RepoRoot(), "deploy", "manifests", "25-webhook.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range bytes.Split(b, []byte("\n---")) {
		var vwc admissionregistrationv1.ValidatingWebhookConfiguration
		if err := yaml.UnmarshalStrict(doc, &vwc); err != nil || vwc.Kind != "ValidatingWebhookConfiguration" {
			continue
		}
		for i := range vwc.Webhooks {
			cc := &vwc.Webhooks[i].ClientConfig
			url := base + *cc.Service.Path
			cc.URL, cc.Service = &url, nil
		}
		if err := c.Create(context.Background(), &vwc); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("no ValidatingWebhookConfiguration in deploy/manifests/25-webhook.yaml")
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func ptr[T any](v T) *T { return &v }
