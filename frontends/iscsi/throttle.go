package iscsi

import (
	"net"
	"sync"
	"time"
)

// Defaults of Config's CHAP failure throttle.
const (
	DefaultAuthFailureDelay    = 200 * time.Millisecond
	DefaultAuthFailureDelayMax = 5 * time.Second
)

// authForgetAfter is how long after its last failure an initiator's
// record is forgotten (its next attempt is not slowed).
const authForgetAfter = 10 * time.Minute

// maxAuthRecords bounds the throttle's memory; past it the records
// quietest the longest are forgotten first.
const maxAuthRecords = 4096

// authKey is what failed CHAP logins are counted by: the initiator's name
// and the address it connects from; and, so that a guesser cannot start
// afresh under a new initiator name, the address alone (anyInitiator),
// which slows every initiator from there only after hostGraceFailures.
type authKey struct {
	initiator, host string
}

// anyInitiator is the initiator of an address's own record.
const anyInitiator = "\x00any"

// hostGraceFailures failed logins from one address, under any names, cost
// nothing more than their per-initiator delays; further ones slow every
// initiator from that address as one initiator's would be.
const hostGraceFailures = 8

// hostKey is the record of k's address.
func (k authKey) hostKey() authKey { return authKey{initiator: anyInitiator, host: k.host} }

func newAuthKey(initiator string, remote net.Addr) authKey {
	host := remote.String()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return authKey{initiator: initiator, host: host}
}

type authRecord struct {
	failures    int
	next        time.Time // no attempt is checked before this
	lastFailure time.Time
}

// authThrottle slows CHAP guessing: after n failed logins of one
// initiator from one address, its next attempt waits base·2^(n−1), at
// most max; concurrent attempts queue one delay apart, so parallel
// connections do not multiply the guess rate. A successful login clears
// the record. Its methods take the time as an argument; the connection
// sleeps what reserve returns.
type authThrottle struct {
	base, max time.Duration

	mu      sync.Mutex
	records map[authKey]*authRecord
}

func newAuthThrottle(base, max time.Duration) *authThrottle {
	return &authThrottle{base: base, max: max, records: map[authKey]*authRecord{}}
}

// delayFor is the wait after k's failures.
func (t *authThrottle) delayFor(k authKey, failures int) time.Duration {
	if k.initiator == anyInitiator {
		failures -= hostGraceFailures
	}
	return t.delay(failures)
}

// delay is the wait after failures failed attempts.
func (t *authThrottle) delay(failures int) time.Duration {
	if failures <= 0 || t.base <= 0 {
		return 0
	}
	d := t.base
	for i := 1; i < failures && d < t.max; i++ {
		d *= 2
	}
	return min(d, t.max)
}

// reserve returns how long an attempt starting at now must wait before
// its response is checked, and books its slot.
func (t *authThrottle) reserve(k authKey, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.records[k]
	if r == nil {
		return 0
	}
	if now.Sub(r.lastFailure) > authForgetAfter {
		delete(t.records, k)
		return 0
	}
	slot := now
	if r.next.After(now) {
		slot = r.next
	}
	r.next = slot.Add(t.delayFor(k, r.failures))
	return slot.Sub(now)
}

// failed records a failed attempt at now and returns the failure count
// and the delay the next attempt waits.
func (t *authThrottle) failed(k authKey, now time.Time) (int, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.records[k]
	if r == nil {
		t.makeRoom(now)
		r = &authRecord{}
		t.records[k] = r
	}
	r.failures++
	r.lastFailure = now
	d := t.delayFor(k, r.failures)
	if next := now.Add(d); next.After(r.next) {
		r.next = next
	}
	return r.failures, d
}

// succeeded forgets k's failures.
func (t *authThrottle) succeeded(k authKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.records, k)
}

// makeRoom keeps the records under maxAuthRecords: it forgets expired
// ones, then the one whose last failure is oldest.
func (t *authThrottle) makeRoom(now time.Time) {
	if len(t.records) < maxAuthRecords {
		return
	}
	var oldestKey authKey
	var oldest time.Time
	for k, r := range t.records {
		if now.Sub(r.lastFailure) > authForgetAfter {
			delete(t.records, k)
			continue
		}
		if oldest.IsZero() || r.lastFailure.Before(oldest) {
			oldestKey, oldest = k, r.lastFailure
		}
	}
	if len(t.records) >= maxAuthRecords {
		delete(t.records, oldestKey)
	}
}
