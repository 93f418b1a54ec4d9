package keyfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestWrapUnwrapRewrap(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 64)
	b, err := wrap(key, []byte("first passphrase"), 1<<10, 8, 1) // cheap: the tests run under -race too
	if err != nil {
		t.Fatal(err)
	}
	if !IsWrapped(b) || IsWrapped([]byte(strings.Repeat("ab", 64))) {
		t.Fatal("IsWrapped wrong")
	}
	if bytes.Contains(b, key) {
		t.Fatal("the key is in the file")
	}
	got, err := Unwrap(b, []byte("first passphrase"))
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("unwrap: %v", err)
	}
	if _, err := Unwrap(b, []byte("guess")); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	b2, err := Rewrap(b, []byte("first passphrase"), []byte("second"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Unwrap(b2, []byte("second")); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("after rewrap: %v", err)
	}
	if _, err := Unwrap(b2, []byte("first passphrase")); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("old passphrase after rewrap: %v", err)
	}
	if _, err := Wrap(key, nil); err == nil {
		t.Error("empty passphrase accepted")
	}
	if _, err := Wrap(key, []byte("x")); err != nil { // the default cost works
		t.Error(err)
	}
}

// TestHostileFile: a file asking for an unbounded scrypt cost, or
// malformed, is refused before any work.
func TestHostileFile(t *testing.T) {
	b, err := wrap([]byte("k"), []byte("p"), 1<<10, 8, 1)
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]any
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(){
		"huge N":     func() { f["scrypt_n"] = 1 << 30 },
		"odd N":      func() { f["scrypt_n"] = 1000 },
		"huge p":     func() { f["scrypt_p"] = 1 << 20 },
		"4 GiB":      func() { f["scrypt_n"] = 1 << 20; f["scrypt_r"] = 32 },
		"short salt": func() { f["salt"] = "AA==" },
		"format":     func() { f["format"] = "other" },
	} {
		saved := map[string]any{}
		for k, v := range f {
			saved[k] = v
		}
		edit()
		bad, _ := json.Marshal(f)
		if _, err := Unwrap(bad, []byte("p")); err == nil || errors.Is(err, ErrWrongPassphrase) {
			t.Errorf("%s: %v", name, err)
		}
		f = saved
	}
	if _, err := Unwrap([]byte("{"), []byte("p")); err == nil {
		t.Error("malformed JSON accepted")
	}
}
