// Package link defines how an engine driver reaches a replica: a Link
// carries requests to one replica, in order, and delivers its replies.
// Two kinds exist: TCP (transports/tcp) for remote replicas, and
// in-process (a replica in the engine's process, reached with no socket
// and no extra goroutine hop, as docs/decisions/0006 in the repository
// explains).
package link

import "github.com/drover-io/drover/core/proto"

// Handler receives what comes back over a link. OnReply may be called from
// any goroutine, but never concurrently with itself for one link. OnDown
// is called once when the link breaks; every request sent and not yet
// answered is then lost (the engine treats it as unreachable).
//
// A reply's Data is handed over with it: the link keeps no reference to
// it, and nothing writes to it any more (a replica's store buffer, or the
// TCP client's copy), so whoever ends up holding it alone may recycle it
// (transports/bufpool; enginerun's Volume does once it copied a read out).
type Handler struct {
	OnReply func(proto.Reply)
	OnDown  func(err error)
	// OnBatch, if set, is called by links that deliver replies on a
	// goroutine of their own (TCP) after each batch of OnReply calls —
	// when no further reply is already buffered — so the receiver can
	// process the batch right there instead of waking a goroutine of its
	// own. A link that calls it lets OnReply defer that processing.
	OnBatch func()
}

// Link sends requests to one replica.
type Link interface {
	// Send queues reqs to go out in order. It does not wait for replies and
	// must not block on the network for long (it may buffer). After the
	// link is down, Send drops requests silently. Send must not keep the
	// reqs slice after it returns (callers reuse it; each request's Data
	// stays untouched until that request is answered).
	Send(reqs ...proto.Request)
	// Close breaks the link; OnDown is not called for a Close.
	Close() error
}

// Dialer opens a link to the replica at addr.
type Dialer func(addr string, h Handler) (Link, error)

// Work is deferred work a link hands back to its caller, to be run once,
// later, on any goroutine (see transports/enginerun's staged links). It is
// an interface rather than a func so that a link can hand out pooled
// values instead of allocating a closure per batch.
type Work interface {
	Run()
}
