package engine

import "testing"

func TestAdminOpNames(t *testing.T) {
	if len(adminOpNames) != int(AdminShrink)+1 {
		t.Fatalf("adminOpNames has %d names for %d ops", len(adminOpNames)-1, AdminShrink)
	}
	if got := AdminDeleteSnapshot.String(); got != "delete snapshot" {
		t.Errorf("AdminDeleteSnapshot.String() = %q", got)
	}
}
