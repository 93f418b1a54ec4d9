package manager

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

var log = ctrl.Log.WithName("manager")

// WebhookConfig sets up the manager's validating admission webhook, which
// refuses what the CRDs' CEL rules cannot judge because it depends on
// other objects: deleting a Node that holds replicas or engines, removing
// (or moving) a Node's disk that holds replicas, deleting a BackingImage
// that volumes use. Every manager copy serves it (no leader election).
type WebhookConfig struct {
	// Port is where the webhook listens (0: no webhook).
	Port int
	// Host is the address it listens on ("": every address).
	Host string
	// ServiceName is the Service in front of the managers: the serving
	// certificate covers its in-cluster DNS names (default
	// "drover-webhook").
	ServiceName string
	// Hosts are more DNS names or IPs the certificate covers.
	Hosts []string
	// SecretName is the TLS Secret (tls.crt, tls.key, ca.crt) holding the
	// certificate; a manager that finds none generates a CA and a
	// certificate and creates it (default "drover-webhook-tls"). One made
	// by cert-manager works as well.
	SecretName string
	// ConfigurationName is the ValidatingWebhookConfiguration whose
	// webhooks' caBundle the manager sets to the Secret's ca.crt ("": the
	// manager leaves it, as with cert-manager's CA injector).
	ConfigurationName string
}

// Webhook paths, as deploy/manifests' ValidatingWebhookConfiguration
// names them.
const (
	WebhookPathNode         = "/validate-node"
	WebhookPathBackingImage = "/validate-backingimage"
)

// setupWebhook registers the webhook server and its certificate loader.
func setupWebhook(mgr manager.Manager, ns string, cfg WebhookConfig) error {
	if cfg.ServiceName == "" {
		cfg.ServiceName = "drover-webhook"
	}
	if cfg.SecretName == "" {
		cfg.SecretName = "drover-webhook-tls"
	}
	certs := &webhookCerts{c: mgr.GetClient(), reader: mgr.GetAPIReader(), ns: ns, cfg: cfg}
	if err := mgr.Add(certs); err != nil {
		return err
	}
	srv := webhook.NewServer(webhook.Options{Host: cfg.Host, Port: cfg.Port,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.GetCertificate = certs.getCertificate }}})
	v := &validator{r: mgr.GetAPIReader(), ns: ns}
	srv.Register(WebhookPathNode, &admission.Webhook{Handler: admission.HandlerFunc(v.node)})
	srv.Register(WebhookPathBackingImage, &admission.Webhook{Handler: admission.HandlerFunc(v.backingImage)})
	return mgr.Add(srv)
}

// validator judges requests against the objects as the API server holds
// them now (uncached reads: a cache a moment behind could let a delete
// through).
type validator struct {
	r  client.Reader
	ns string
}

// node refuses deleting a Node that holds replicas or engines, and an
// update that removes or moves a disk holding replicas.
func (v *validator) node(ctx context.Context, req admission.Request) admission.Response {
	if req.Namespace != v.ns {
		return admission.Allowed("")
	}
	switch req.Operation {
	case admissionv1.Delete:
		reps, engs, err := v.onNode(ctx, req.Name)
		if err != nil {
			return admission.Errored(http.StatusInternalServerError, err)
		}
		if len(reps)+len(engs) == 0 {
			return admission.Allowed("")
		}
		var held []string
		if len(reps) > 0 {
			held = append(held, fmt.Sprintf("%d replica(s) of volume(s) %s", len(reps), volumesOf(reps)))
		}
		if len(engs) > 0 {
			held = append(held, fmt.Sprintf("the engine(s) of volume(s) %s", volumesOf(engs)))
		}
		return admission.Denied(fmt.Sprintf("node %s still holds %s: detach those volumes, set the node's "+
			"spec.allowScheduling to false and delete its replicas one at a time (each is rebuilt elsewhere), "+
			"or delete the volumes; then delete the node", req.Name, strings.Join(held, " and ")))
	case admissionv1.Update:
		var oldNode, newNode v1alpha1.Node
		if err := json.Unmarshal(req.OldObject.Raw, &oldNode); err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("old node: %w", err))
		}
		if err := json.Unmarshal(req.Object.Raw, &newNode); err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("node: %w", err))
		}
		var changed []string
		for name, d := range oldNode.Spec.Disks {
			if nd, ok := newNode.Spec.Disks[name]; !ok || nd.Path != d.Path {
				changed = append(changed, name)
			}
		}
		if len(changed) == 0 {
			return admission.Allowed("")
		}
		reps, _, err := v.onNode(ctx, req.Name)
		if err != nil {
			return admission.Errored(http.StatusInternalServerError, err)
		}
		sort.Strings(changed)
		for _, disk := range changed {
			var on []volumeNamed
			for _, r := range reps {
				if r.(replicaOf).Spec.DiskName == disk {
					on = append(on, r)
				}
			}
			if len(on) > 0 {
				return admission.Denied(fmt.Sprintf("spec.disks[%s] of node %s holds %d replica(s) of volume(s) %s: "+
					"its path cannot change nor the disk go; set its allowScheduling to false and delete those replicas "+
					"one at a time (each is rebuilt elsewhere) first", disk, req.Name, len(on), volumesOf(on)))
			}
		}
	}
	return admission.Allowed("")
}

// backingImage refuses deleting a BackingImage that volumes name.
func (v *validator) backingImage(ctx context.Context, req admission.Request) admission.Response {
	if req.Namespace != v.ns || req.Operation != admissionv1.Delete {
		return admission.Allowed("")
	}
	var vols v1alpha1.VolumeList
	if err := v.r.List(ctx, &vols, client.InNamespace(v.ns)); err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("list volumes: %w", err))
	}
	var users []string
	for _, vol := range vols.Items {
		if vol.Spec.BackingImage == req.Name {
			users = append(users, vol.Name)
		}
	}
	if len(users) == 0 {
		return admission.Allowed("")
	}
	sort.Strings(users)
	return admission.Denied(fmt.Sprintf("backing image %s is used by volume(s) %s: delete them first",
		req.Name, strings.Join(users, ", ")))
}

// volumeNamed is a Replica or an Engine.
type volumeNamed interface{ volume() string }

type replicaOf struct{ *v1alpha1.Replica }

func (r replicaOf) volume() string { return r.Spec.VolumeName }

type engineOf struct{ *v1alpha1.Engine }

func (e engineOf) volume() string { return e.Spec.VolumeName }

// onNode lists the replicas and engines assigned to node.
func (v *validator) onNode(ctx context.Context, node string) (reps, engs []volumeNamed, err error) {
	var rl v1alpha1.ReplicaList
	if err := v.r.List(ctx, &rl, client.InNamespace(v.ns)); err != nil {
		return nil, nil, fmt.Errorf("list replicas: %w", err)
	}
	for i := range rl.Items {
		if rl.Items[i].Spec.NodeID == node {
			reps = append(reps, replicaOf{&rl.Items[i]})
		}
	}
	var el v1alpha1.EngineList
	if err := v.r.List(ctx, &el, client.InNamespace(v.ns)); err != nil {
		return nil, nil, fmt.Errorf("list engines: %w", err)
	}
	for i := range el.Items {
		if el.Items[i].Spec.NodeID == node {
			engs = append(engs, engineOf{&el.Items[i]})
		}
	}
	return reps, engs, nil
}

// volumesOf names the distinct volumes of objs, sorted.
func volumesOf(objs []volumeNamed) string {
	seen := map[string]bool{}
	var out []string
	for _, o := range objs {
		if name := o.volume(); !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}
