package iscsi

import (
	"fmt"
	"testing"
	"time"
)

func TestAuthThrottle(t *testing.T) {
	th := newAuthThrottle(200*time.Millisecond, 5*time.Second)
	k := authKey{initiator: "iqn.x", host: "10.0.0.1"}
	other := authKey{initiator: "iqn.x", host: "10.0.0.2"}
	now := time.Unix(1000, 0)
	if w := th.reserve(k, now); w != 0 {
		t.Fatalf("first attempt waits %v", w)
	}
	var delays []time.Duration
	for range 8 {
		now = now.Add(th.reserve(k, now)) // the attempt waits its turn
		_, d := th.failed(k, now)
		delays = append(delays, d)
	}
	if got, want := fmt.Sprint(delays), "[200ms 400ms 800ms 1.6s 3.2s 5s 5s 5s]"; got != want {
		t.Errorf("delays %s, want %s", got, want)
	}
	if w := th.reserve(other, now); w != 0 {
		t.Errorf("another address waits %v", w)
	}
	// Concurrent attempts queue one delay apart.
	w1, w2 := th.reserve(k, now), th.reserve(k, now)
	if w1 != 5*time.Second || w2 != 10*time.Second {
		t.Errorf("two concurrent attempts wait %v and %v, want 5s and 10s", w1, w2)
	}
	th.succeeded(k)
	if w := th.reserve(k, now); w != 0 {
		t.Errorf("after a success the next attempt waits %v", w)
	}
	th.failed(k, now)
	if w := th.reserve(k, now.Add(authForgetAfter+time.Second)); w != 0 {
		t.Errorf("a failure long ago still slows: %v", w)
	}
	for i := range maxAuthRecords + 10 {
		th.failed(authKey{initiator: fmt.Sprint(i), host: "h"}, now.Add(time.Duration(i)))
	}
	if n := len(th.records); n > maxAuthRecords {
		t.Errorf("%d records kept, bound %d", n, maxAuthRecords)
	}
}

// TestAuthThrottleNameRotation: a guesser that takes a new initiator name
// for every attempt is slowed by its address's record once it has failed
// hostGraceFailures times.
func TestAuthThrottleNameRotation(t *testing.T) {
	th := newAuthThrottle(200*time.Millisecond, 5*time.Second)
	now := time.Unix(1000, 0)
	var waits []time.Duration
	for i := range hostGraceFailures + 3 {
		k := authKey{initiator: fmt.Sprintf("iqn.guess-%d", i), host: "10.0.0.9"}
		w := max(th.reserve(k, now), th.reserve(k.hostKey(), now))
		waits = append(waits, w)
		now = now.Add(w)
		th.failed(k, now)
		th.failed(k.hostKey(), now)
	}
	if got, want := fmt.Sprint(waits), "[0s 0s 0s 0s 0s 0s 0s 0s 0s 200ms 400ms]"; got != want {
		t.Errorf("waits %s, want %s", got, want)
	}
	legit := authKey{initiator: "iqn.legit", host: "10.0.0.10"}
	if w := max(th.reserve(legit, now), th.reserve(legit.hostKey(), now)); w != 0 {
		t.Errorf("an initiator at another address waits %v", w)
	}
}
