package backuptarget_test

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drover-io/drover/k8s/backuptarget"
	"github.com/drover-io/drover/k8s/k8stest"
	"github.com/drover-io/drover/transports/objstore/s3test"
)

// TestCredentialSecret opens a real S3 server (versitygw) with the
// credentials of a Secret in a real API server, as a BackupTarget's
// credentialSecret names it; a secret with the wrong keys, a missing
// secret and one lacking a key are refused with errors naming them.
func TestCredentialSecret(t *testing.T) {
	// The process's environment must not be what makes it work.
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	env := k8stest.Start(t)
	srv := s3test.Start(t, "drover")
	ctx := context.Background()
	secret := func(name string, data map[string]string) {
		t.Helper()
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: k8stest.Namespace}, StringData: data}
		if err := env.Client.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	secret("s3-good", map[string]string{backuptarget.AccessKeyField: srv.AccessKey, backuptarget.SecretKeyField: srv.SecretKey})
	secret("s3-wrong", map[string]string{backuptarget.AccessKeyField: srv.AccessKey, backuptarget.SecretKeyField: "not-it"})
	secret("s3-half", map[string]string{backuptarget.AccessKeyField: srv.AccessKey})
	url := srv.URL("drover", "k8s")

	repo, err := backuptarget.Open(ctx, env.Client, k8stest.Namespace, url, "s3-good")
	if err != nil {
		t.Fatalf("open with the secret: %v", err)
	}
	if _, err := repo.Latest(ctx, "vol"); err != nil {
		t.Fatalf("list with the secret's credentials: %v", err)
	}
	if repo, err := backuptarget.Open(ctx, env.Client, k8stest.Namespace, url, "s3-wrong"); err == nil {
		if _, err := repo.Latest(ctx, "vol"); err == nil {
			t.Fatal("wrong credentials listed the bucket")
		}
	}
	for name, want := range map[string]string{"s3-half": "has no AWS_SECRET_ACCESS_KEY", "nope": "credential secret drover-system/nope"} {
		if _, err := backuptarget.Open(ctx, env.Client, k8stest.Namespace, url, name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("secret %s: %v, want an error with %q", name, err, want)
		}
	}
}
