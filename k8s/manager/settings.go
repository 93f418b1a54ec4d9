package manager

import (
	"context"
	"fmt"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/schedule"
)

func isAlreadyExists(err error) bool { return apierrors.IsAlreadyExists(err) }

// settings are the Settings' values, parsed; a Setting that is missing
// or unparsable counts as its default.
type settings struct {
	defaultReplicas     int32
	rebuildsPerNode     int // 0: no limit
	staleReplicaTimeout time.Duration
	nodeDownGrace       time.Duration
	schedule            schedule.Settings
	autoBalance         v1alpha1.ReplicaAutoBalance
}

func loadSettings(ctx context.Context, c client.Reader, ns string) (settings, error) {
	var list v1alpha1.SettingList
	if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return settings{}, fmt.Errorf("list settings: %w", err)
	}
	values := map[string]string{}
	for name, def := range v1alpha1.SettingDefinitions {
		values[name] = def.Default
	}
	for _, s := range list.Items {
		if v1alpha1.ParseSettingValue(s.Name, s.Value) == nil {
			values[s.Name] = s.Value
		}
	}
	i := func(name string) int64 { n, _ := strconv.ParseInt(values[name], 10, 64); return n }
	b := func(name string) bool { v, _ := strconv.ParseBool(values[name]); return v }
	d := func(name string) time.Duration { v, _ := time.ParseDuration(values[name]); return v }
	return settings{
		defaultReplicas:     int32(i(v1alpha1.SettingDefaultReplicaCount)),
		rebuildsPerNode:     int(i(v1alpha1.SettingConcurrentRebuildsPerNode)),
		staleReplicaTimeout: d(v1alpha1.SettingStaleReplicaTimeout),
		nodeDownGrace:       d(v1alpha1.SettingNodeDownGracePeriod),
		autoBalance:         v1alpha1.ReplicaAutoBalance(values[v1alpha1.SettingReplicaAutoBalance]),
		schedule: schedule.Settings{
			MinimalAvailablePct:  i(v1alpha1.SettingStorageMinimalAvailablePct),
			OverProvisioningPct:  i(v1alpha1.SettingStorageOverProvisioningPct),
			NodeSoftAntiAffinity: b(v1alpha1.SettingReplicaNodeSoftAntiAffinity),
			ZoneSoftAntiAffinity: b(v1alpha1.SettingReplicaZoneSoftAntiAffinity),
			DiskSoftAntiAffinity: b(v1alpha1.SettingReplicaDiskSoftAntiAffinity),
		},
	}, nil
}
