package manager

import (
	"context"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/schedule"
)

// CheckPlacement says whether a Volume not yet created could have all
// its replicas placed now, by the same scheduler and Settings the
// manager uses: nil, or an error wrapping *schedule.UnschedulableError
// with the scheduler's reasons. The CSI driver asks before it creates a
// Volume, so CreateVolume can refuse (leaving nothing behind) a volume
// that no disk or no set of nodes can hold. A strict-local volume's
// replica is checked against every node, as it is placed at attach.
func CheckPlacement(ctx context.Context, c client.Client, vol *v1alpha1.Volume) error {
	r := &volumeReconciler{Client: c, ns: vol.Namespace}
	v, err := r.read(ctx, vol)
	if err != nil {
		return err
	}
	nodes, err := r.scheduleNodes(ctx, v)
	if err != nil {
		return err
	}
	req := schedule.Request{SizeBytes: vol.Spec.Size, NodeSelector: vol.Spec.NodeSelector, DiskSelector: vol.Spec.DiskSelector}
	want := v.wantReplicas()
	if _, err := schedule.PlaceMany(nodes, req, want, v.settings.schedule); err != nil {
		return fmt.Errorf("%d replicas of %d bytes: %w", want, vol.Spec.Size, err)
	}
	return nil
}
