package manager

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"sync/atomic"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// webhookCerts gives the webhook server its certificate: the Secret's
// (SecretName) when it exists, else a CA and a serving certificate it
// generates and stores in that Secret, so every manager copy serves the
// same one; and it writes the CA into the caBundle of the
// ValidatingWebhookConfiguration's webhooks so the API server trusts it.
type webhookCerts struct {
	c      client.Client
	reader client.Reader // uncached: Secrets and the configuration are read once
	ns     string
	cfg    WebhookConfig
	cert   atomic.Pointer[tls.Certificate]
}

// names are the DNS names and IPs the serving certificate covers.
func (w *webhookCerts) names() []string {
	svc := w.cfg.ServiceName
	out := []string{svc, svc + "." + w.ns, svc + "." + w.ns + ".svc", svc + "." + w.ns + ".svc.cluster.local"}
	return append(out, w.cfg.Hosts...)
}

// getCertificate is the TLS server's: no certificate until Start loaded it.
func (w *webhookCerts) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := w.cert.Load(); c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("webhook certificate not loaded yet")
}

func (*webhookCerts) NeedLeaderElection() bool { return false }

// Start loads (or makes) the certificate, then keeps the configuration's
// caBundle set, retrying while the API server refuses.
func (w *webhookCerts) Start(ctx context.Context) error {
	var ca []byte
	for {
		var err error
		if ca, err = w.load(ctx); err == nil {
			break
		}
		log.Error(err, "webhook certificate")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
	if w.cfg.ConfigurationName == "" {
		<-ctx.Done()
		return nil
	}
	// The configuration may be created after the manager, or its
	// caBundle reset by a re-apply of the manifests: look every while.
	for {
		if err := w.setCABundle(ctx, ca); err != nil && ctx.Err() == nil {
			log.Error(err, "webhook configuration caBundle")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Second):
		}
	}
}

// load reads the Secret, creating it with a new CA and certificate when
// it does not exist; it returns the CA in PEM.
func (w *webhookCerts) load(ctx context.Context) ([]byte, error) {
	key := types.NamespacedName{Namespace: w.ns, Name: w.cfg.SecretName}
	var s corev1.Secret
	err := w.reader.Get(ctx, key, &s)
	if apierrors.IsNotFound(err) {
		s = corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace,
			Labels: map[string]string{"app.kubernetes.io/name": "drover", "app.kubernetes.io/component": "webhook"}},
			Type: corev1.SecretTypeTLS}
		if s.Data, err = generateWebhookCert(w.names(), time.Now()); err != nil {
			return nil, err
		}
		if err = w.c.Create(ctx, &s); apierrors.IsAlreadyExists(err) {
			err = w.reader.Get(ctx, key, &s) // another manager made it first
		}
	}
	if err != nil {
		return nil, fmt.Errorf("webhook secret %s: %w", key.Name, err)
	}
	pair, err := tls.X509KeyPair(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, fmt.Errorf("webhook secret %s: %w", key.Name, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("webhook secret %s: %w", key.Name, err)
	}
	for _, name := range w.names() {
		if err := leaf.VerifyHostname(name); err != nil {
			return nil, fmt.Errorf("webhook secret %s: the certificate does not cover %s (delete the secret and a manager makes a new one): %w",
				key.Name, name, err)
		}
	}
	ca := s.Data["ca.crt"]
	if len(ca) == 0 {
		return nil, fmt.Errorf("webhook secret %s has no ca.crt", key.Name)
	}
	w.cert.Store(&pair)
	return ca, nil
}

// setCABundle writes ca into every webhook of the configuration that
// lacks it.
func (w *webhookCerts) setCABundle(ctx context.Context, ca []byte) error {
	var vwc admissionregistrationv1.ValidatingWebhookConfiguration
	if err := w.reader.Get(ctx, types.NamespacedName{Name: w.cfg.ConfigurationName}, &vwc); err != nil {
		return fmt.Errorf("get %s: %w", w.cfg.ConfigurationName, err)
	}
	// A merge patch replaces the webhooks list whole: it carries the
	// resourceVersion so a concurrent change is not overwritten.
	patch := client.MergeFromWithOptions(vwc.DeepCopy(), client.MergeFromWithOptimisticLock{})
	changed := false
	for i := range vwc.Webhooks {
		if string(vwc.Webhooks[i].ClientConfig.CABundle) != string(ca) {
			vwc.Webhooks[i].ClientConfig.CABundle = ca
			changed = true
		}
	}
	if !changed {
		return nil
	}
	if err := w.c.Patch(ctx, &vwc, patch); err != nil {
		return fmt.Errorf("set the caBundle of %s: %w", w.cfg.ConfigurationName, err)
	}
	log.Info("webhook configuration trusts the webhook's CA", "configuration", w.cfg.ConfigurationName)
	return nil
}

// generateWebhookCert makes a CA and a serving certificate for names
// (DNS names, or IPs), valid ten years from now, as a TLS Secret's data
// with the CA in ca.crt.
func generateWebhookCert(names []string, now time.Time) (map[string][]byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("webhook CA key: %w", err)
	}
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
		return n
	}
	notAfter := now.AddDate(10, 0, 0)
	caTmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "drover-webhook-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("webhook CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("webhook key: %w", err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: now.Add(-time.Hour), NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("webhook certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		corev1.TLSCertKey:       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		corev1.TLSPrivateKeyKey: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		"ca.crt":                pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
	}, nil
}
