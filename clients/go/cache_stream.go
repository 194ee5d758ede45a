package entitlements

import (
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// The stream side of Cache: one goroutine (run) opens WatchEntitlements, applies what it receives and reopens it
// when it breaks. Only that goroutine touches cursor.

// errSilent ends a stream that stayed silent for longer than MaxStaleness (a dead connection that TCP has not
// noticed, a proxy that swallowed the stream): the cache reopens it.
var errSilent = errors.New("no message from the service within max staleness")

// run is the cache's goroutine: streams one after the other until Close or an error that reopening cannot fix.
func (c *Cache) run() {
	defer close(c.done)
	policy := c.client.retry
	backoff := policy.InitialBackoff
	cursor := ""
	for {
		if !c.waitForPlayers() {
			return
		}
		received, err := c.watchOnce(&cursor)
		c.up.Store(false)
		if c.ctx.Err() != nil {
			return
		}
		switch code := codeOf(err); code {
		case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument, codes.Unimplemented:
			// Reopening cannot fix a key, a scope, a request or a service without the RPC: stop and say so.
			c.stop(err)
			return
		case codes.OutOfRange:
			if cursor != "" {
				// The cursor is older than the history kept: changes may have been missed. Reopen at once
				// without it; every player is read again (a snapshot) and refused meanwhile.
				cursor = ""
				c.setState(CacheResuming, err)
				c.reopens.Add(1)
				continue
			}
		}
		if received {
			backoff = policy.InitialBackoff // the stream worked: the next break starts a new series
		}
		c.setState(CacheResuming, err)
		timer := time.NewTimer(jittered(backoff))
		select {
		case <-c.ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		backoff = min(time.Duration(float64(backoff)*policy.multiplier()), policy.MaxBackoff)
		c.reopens.Add(1)
	}
}

// waitForPlayers returns once the cache holds a player (a stream names at least one), false when it is closed.
func (c *Cache) waitForPlayers() bool {
	for {
		c.mu.RLock()
		held, signal := len(c.players), c.signal
		c.mu.RUnlock()
		if held > 0 {
			return true
		}
		select {
		case <-c.ctx.Done():
			return false
		case <-signal:
		}
	}
}

// watchOnce opens one stream (resuming after *cursor when set, else reading every player again) and applies
// what it delivers until it fails; received says whether it delivered anything.
func (c *Cache) watchOnce(cursor *string) (received bool, err error) {
	first, resumed := c.opening(*cursor)
	stream, err := c.client.WatchEntitlements(c.ctx, first)
	if err != nil {
		return false, err
	}
	defer stream.Close()
	later := c.attach(stream, resumed)
	defer c.detach()
	for _, msg := range later {
		if stream.Send(msg) != nil {
			break // the stream is over: Recv says why
		}
	}
	live := false
	silent := make(chan struct{})
	stopWatchdog := c.watchdog(stream, silent)
	defer stopWatchdog()
	for {
		resp, err := stream.Recv()
		if err != nil {
			c.up.Store(false) // refuse from now on, not from when run gets to it
			select {
			case <-silent:
				return received, &Error{Code: codes.Unavailable, Message: errSilent.Error(), cause: errSilent}
			default:
			}
			if errors.Is(err, io.EOF) {
				err = &Error{Code: codes.Unavailable, Message: "the service ended the watch stream", cause: err}
			}
			return received, err
		}
		c.lastHeard.Store(int64(time.Since(c.base)))
		received = true
		if !live && resp.GetHeartbeat() != nil {
			// Current from the stream's first heartbeat, not its first message: the service sends that heartbeat
			// once a resumed stream's changes since the cursor are sent, and up to then the cache would answer
			// from before them.
			live = true
			c.up.Store(true)
			c.setState(CacheConnected, nil)
			c.mu.Lock()
			c.wake() // Ready and AddPlayers(wait) wait for it
			c.mu.Unlock()
		}
		c.apply(stream, resp)
		if resp.GetCursor() != "" {
			*cursor = resp.GetCursor()
		}
	}
}

// opening builds the first message of a stream. With a cursor, it resumes the players already read (no
// snapshot; resumed lists them all, the first message carries what fits). Without one, every player is marked
// outdated and the first message asks for snapshots of those that fit; attach asks for the rest.
func (c *Cache) opening(cursor string) (first *v1.WatchEntitlementsRequest, resumed []string) {
	first = &v1.WatchEntitlementsRequest{
		ProjectId:         c.projectID,
		Cursor:            cursor,
		HeartbeatInterval: durationpb.New(c.heartbeat),
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.session++
	clear(c.inflight) // what the last stream was asked is never answered now
	if cursor == "" {
		now := time.Now()
		for _, p := range c.players {
			if p.ready && !p.outdated {
				p.outdated, p.since = true, now
			}
		}
		first.Snapshot = true
		for id, p := range c.players {
			if len(first.AddUserIds) == MaxIDsPerWatchMessage {
				break
			}
			c.ask(id, p)
			first.AddUserIds = append(first.AddUserIds, id)
		}
		return first, nil
	}
	for id, p := range c.players {
		if p.ready && !p.outdated {
			resumed = append(resumed, id)
		}
	}
	n := min(len(resumed), MaxIDsPerWatchMessage)
	first.AddUserIds = resumed[:n:n]
	return first, resumed[n:]
}

// attach makes stream the one AddPlayers and gap recovery send on, and returns the stream's other opening
// messages: the resumed players that did not fit the first message (still held), then snapshots of every
// player that needs one and was not asked for on this stream yet (not read yet, or outdated).
func (c *Cache) attach(stream *WatchStream, resumed []string) []*v1.WatchEntitlementsRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stream = stream
	var keep, ask []string
	for _, id := range resumed {
		if c.players[id] != nil {
			keep = append(keep, id)
		}
	}
	for id, p := range c.players {
		if (!p.ready || p.outdated) && p.asked != c.session {
			c.ask(id, p)
			ask = append(ask, id)
		}
	}
	var msgs []*v1.WatchEntitlementsRequest
	for _, chunk := range chunks(keep, MaxIDsPerWatchMessage) {
		msgs = append(msgs, &v1.WatchEntitlementsRequest{AddUserIds: chunk})
	}
	for _, chunk := range chunks(ask, MaxIDsPerWatchMessage) {
		msgs = append(msgs, &v1.WatchEntitlementsRequest{AddUserIds: chunk, Snapshot: true})
	}
	return msgs
}

func (c *Cache) detach() {
	c.mu.Lock()
	c.stream = nil
	c.mu.Unlock()
}

// watchdog closes stream, and closes silent, when nothing arrives on it for longer than MaxStaleness (counted
// from its opening until its first message: a service that accepts the stream and then says nothing is as dead
// as one that falls silent); the returned function stops it.
func (c *Cache) watchdog(stream *WatchStream, silent chan struct{}) func() {
	stop := make(chan struct{})
	opened := time.Now()
	go func() {
		ticker := time.NewTicker(c.heartbeat / 4)
		defer ticker.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ticker.C:
			}
			if min(c.Staleness(), time.Since(opened)) <= c.maxStale {
				continue
			}
			if c.up.Load() {
				c.setState(CacheStale, fmt.Errorf("entitlements: %w (%v)", errSilent, c.maxStale))
			}
			close(silent)
			stream.Close()
			return
		}
	}()
	return func() { close(stop) }
}

// apply applies one message of the stream.
func (c *Cache) apply(stream *WatchStream, resp *v1.WatchEntitlementsResponse) {
	switch event := resp.GetEvent().(type) {
	case *v1.WatchEntitlementsResponse_Change:
		if gap := c.applyChange(event.Change); gap != "" {
			_ = stream.AddPlayers([]string{gap}, true) // a failed send: the next stream asks again
		}
	case *v1.WatchEntitlementsResponse_Snapshot:
		c.applySnapshot(event.Snapshot)
	}
}

// applyChange applies a change that is the player's next version; it ignores one at or below (a duplicate)
// and, for a jump (a missed change), marks the player outdated and returns its id so a snapshot is asked for.
func (c *Cache) applyChange(change *v1.EntitlementChange) (gap string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.players[change.GetUserId()]
	if p == nil || !p.ready || p.outdated {
		// Not held, or its snapshot is on the way: the snapshot includes this change or precedes it, and a
		// change after the snapshot is checked against the snapshot's version.
		return ""
	}
	switch v := change.GetVersion(); {
	case v <= p.version:
		c.duplicates.Add(1)
	case v > p.version+1:
		c.gaps.Add(1)
		p.outdated, p.since = true, time.Now()
		c.ask(change.GetUserId(), p)
		return change.GetUserId()
	default:
		if change.GetEntitlement() == nil {
			delete(p.items, change.GetSku())
		} else {
			p.items[change.GetSku()] = newCachedItem(change.GetEntitlement())
		}
		p.version = v
		c.changes.Add(1)
	}
	return ""
}

// applySnapshot replaces a held player's state with the snapshot, unless a later snapshot of it is on the way.
func (c *Cache) applySnapshot(snapshot *v1.PlayerSnapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := snapshot.GetUserId()
	if n := c.inflight[id]; n > 1 {
		// Asked for again since (the player was removed and added back, possibly missing changes meanwhile):
		// only the last answer is current.
		c.inflight[id] = n - 1
		return
	}
	delete(c.inflight, id)
	p := c.players[id]
	if p == nil {
		return // removed meanwhile
	}
	items := make(map[string]cachedItem, len(snapshot.GetEntitlements()))
	for _, e := range snapshot.GetEntitlements() {
		items[e.GetSku()] = newCachedItem(e)
	}
	p.items, p.version, p.ready, p.outdated = items, snapshot.GetVersion(), true, false
	c.snapshots.Add(1)
	c.wake()
}

// stop records the error that ended the cache for good and tells the waiters.
func (c *Cache) stop(err error) {
	c.fatal.Store(&err)
	c.mu.Lock()
	c.wake()
	c.mu.Unlock()
	c.setState(CacheFailed, err)
}

// setState calls OnState when the state changes.
func (c *Cache) setState(state CacheState, err error) {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	if c.state == state {
		return
	}
	c.state = state
	if c.onState != nil {
		c.onState(state, err)
	}
}
