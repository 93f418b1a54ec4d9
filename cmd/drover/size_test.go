package main

import "testing"

func TestParseSize(t *testing.T) {
	good := map[string]uint64{"4096": 4096, "512MiB": 512 << 20, "1GiB": 1 << 30, "1gib": 1 << 30,
		"10G": 10 << 30, "4K": 4096, "2TiB": 2 << 40, "1GB": 1e9, "0": 0, "8 MiB": 8 << 20}
	for in, want := range good {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "-1", "1.5GiB", "12XB", "99999999999TiB"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d; want an error", in, got)
		}
	}
	if s := formatSize(3 << 30); s != "3GiB" {
		t.Errorf("formatSize(3GiB) = %q", s)
	}
}
