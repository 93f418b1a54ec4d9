package fuzz

import (
	"encoding/json"
	"testing"

	"github.com/drover-io/drover/transports/keyfile"
)

// FuzzKeyfileUnwrap: a key file from anywhere (a hostile or damaged
// one) never panics Unwrap, which returns a key or an error; inputs
// asking for a large (but allowed) scrypt cost are skipped to keep the
// fuzzer fast, since Unwrap's bounds are tested in the package.
func FuzzKeyfileUnwrap(f *testing.F) {
	valid, err := keyfile.Wrap(make([]byte, 64), []byte("pass"))
	if err != nil {
		f.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(valid, &m); err != nil {
		f.Fatal(err)
	}
	m["scrypt_n"] = 2 // cheap, so the fuzzer can reach the AEAD
	cheap, _ := json.Marshal(m)
	f.Add(cheap, []byte("pass"))
	f.Add(cheap, []byte("wrong"))
	f.Add([]byte(`{"format":"drover-wrapped-key-v1"}`), []byte("p"))
	f.Add([]byte("{"), []byte("p"))
	f.Fuzz(func(t *testing.T, b, pass []byte) {
		var cost struct {
			N int64 `json:"scrypt_n"`
			R int64 `json:"scrypt_r"`
			P int64 `json:"scrypt_p"`
		}
		if json.Unmarshal(b, &cost) == nil && cost.N*max(cost.R, 1)*max(cost.P, 1) > 1<<12 && cost.N <= 1<<20 {
			return
		}
		key, err := keyfile.Unwrap(b, pass)
		if err == nil && key == nil {
			t.Fatal("no error and no key")
		}
		if err != nil && key != nil {
			t.Fatal("an error and a key")
		}
	})
}
