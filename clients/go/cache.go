package entitlements

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// DefaultMaxStaleness is how long a Cache may go without hearing from its stream before it refuses to answer.
const DefaultMaxStaleness = 5 * time.Second

// minMaxStaleness is the smallest MaxStaleness: twice the shortest heartbeat interval the service accepts (1 s),
// so that a quiet, healthy stream is never reported stale between two heartbeats.
const minMaxStaleness = 2 * time.Second

// maxHeartbeat is the longest heartbeat interval the service accepts.
const maxHeartbeat = 5 * time.Minute

var (
	// ErrNotCached is returned (wrapped, with the player's id) by a check on a player the cache does not hold:
	// never added, removed, or added and still waiting for its first snapshot. Ask the service instead.
	ErrNotCached = errors.New("entitlements: player not in the cache")
	// ErrClosed is returned by every call on a closed Cache.
	ErrClosed = errors.New("entitlements: the cache is closed")
)

// StaleError is returned by a check when the cache cannot vouch for its answer: nothing was heard from the stream
// for more than MaxStaleness, the stream is down and not yet resumed, or (UserID set) this player's state is being
// read again after a missed change or an expired cursor. The cache answers again as soon as that is over.
type StaleError struct {
	// For is how long the cache has not been current: since the stream was last heard from, or since the
	// player's state was found outdated.
	For time.Duration
	// UserID is the player whose state is being read again; "" when the whole cache is stale.
	UserID string
}

func (e *StaleError) Error() string {
	if e.UserID != "" {
		return fmt.Sprintf("entitlements: the cache is re-reading player %q (outdated for %v)", e.UserID,
			e.For.Round(time.Millisecond))
	}
	return fmt.Sprintf("entitlements: the cache is stale: nothing heard from the service for %v",
		e.For.Round(time.Millisecond))
}

// IsStale reports whether err is a *StaleError.
func IsStale(err error) bool {
	var e *StaleError
	return errors.As(err, &e)
}

// CacheState is what a Cache tells its OnState callback.
type CacheState int

const (
	// CacheConnected: the stream is open and heard from; checks are answered.
	CacheConnected CacheState = iota + 1
	// CacheResuming: the stream broke; the cache reopens it (checks return a *StaleError meanwhile).
	CacheResuming
	// CacheStale: the stream is open but silent for more than MaxStaleness; the cache reopens it.
	CacheStale
	// CacheFailed: the service refused the stream for good (the error says why); every check returns it.
	CacheFailed
	// CacheClosed: Close was called; every check returns ErrClosed.
	CacheClosed
)

func (s CacheState) String() string {
	switch s {
	case CacheConnected:
		return "connected"
	case CacheResuming:
		return "resuming"
	case CacheStale:
		return "stale"
	case CacheFailed:
		return "failed"
	case CacheClosed:
		return "closed"
	}
	return fmt.Sprintf("CacheState(%d)", int(s))
}

// CacheOptions configures NewCache.
type CacheOptions struct {
	// Players to hold from the start (each 1..256 bytes of UTF-8, no control characters; at most
	// MaxPlayersPerWatch in all).
	Players []string
	// The Xsolla project; 0: the client's (WithProjectID), else the service decides as for every request.
	ProjectID int64
	// How long the cache may go without hearing from the service before checks return a *StaleError:
	// DefaultMaxStaleness (5 s) when 0, else 2 s..15 min. The cache asks for a heartbeat every
	// max(1 s, MaxStaleness/3) and reopens a stream silent for longer than MaxStaleness.
	MaxStaleness time.Duration
	// NoWait makes NewCache return at once instead of waiting for every player's snapshot (see Ready).
	NoWait bool
	// OnState, when set, is called on each change of state, with the error that caused it (nil for
	// CacheConnected). It runs on the cache's own goroutine: return quickly, and do not call Close from it.
	OnState func(state CacheState, err error)
}

// CachedCheck is a check answered by a Cache, with the meaning of CheckEntitlementResponse.
type CachedCheck struct {
	// Active: the player holds the item now (quantity > 0 and, for a time-limited item, the local clock before
	// its expires_at).
	Active bool
	// Entitlement is what the player holds of the sku, also when expired; nil when the player does not hold it.
	// It is shared with the cache: do not modify it.
	Entitlement *v1.Entitlement
}

// CacheStats counts what a Cache has done since it was created.
type CacheStats struct {
	// ChangesApplied: changes applied to a player's items.
	ChangesApplied uint64
	// Snapshots applied.
	Snapshots uint64
	// Reopenings of the stream after it broke (resumed with the cursor, or read again after OUT_OF_RANGE); the
	// first opening is not counted.
	Reopenings uint64
	// Gaps: changes whose version jumped past the player's next one; the player was read again.
	Gaps uint64
	// Duplicates: changes at or below the player's version, ignored (a correct service sends none).
	Duplicates uint64
}

// Cache holds the entitlements of a set of players in memory, kept current by a WatchEntitlements stream, and
// answers checks without a call. Create it with Client.NewCache; it is safe for concurrent use.
//
// Staleness: it refuses rather than answers stale. A stale "owned" after a refund gives away what was paid back,
// and a stale "not owned" after a purchase refuses what was paid for; neither is a risk worth one RPC. When
// nothing was heard from the service for MaxStaleness (a change, a snapshot or a heartbeat), or while the stream
// is down, every check returns a *StaleError: fall back to CheckEntitlement(s), or hold the match.
type Cache struct {
	client    *Client
	projectID int64
	maxStale  time.Duration
	heartbeat time.Duration
	onState   func(CacheState, error)

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	base      time.Time    // the monotonic origin of lastHeard
	lastHeard atomic.Int64 // nanoseconds since base when the stream was last heard from
	up        atomic.Bool  // the current stream has delivered a message and not failed since
	fatal     atomic.Pointer[error]
	closed    atomic.Bool

	mu      sync.RWMutex
	players map[string]*cachedPlayer
	initial []string      // the players Ready waits for
	signal  chan struct{} // closed and replaced when a snapshot lands or the cache stops
	stream  *WatchStream  // the open stream, nil between streams
	session uint64        // which stream asked for a player's snapshot (cachedPlayer.asked)
	// inflight counts the snapshots asked for on the current stream and not received yet, per player (held or
	// removed since): the service answers each ask, in order, so only the last one answers for the player's
	// current state (a player removed and added again while its first snapshot was on the way).
	inflight map[string]int

	stateMu sync.Mutex
	state   CacheState

	changes, snapshots, reopens, gaps, duplicates atomic.Uint64
}

type cachedPlayer struct {
	items   map[string]cachedItem
	version int64
	// ready: a snapshot has arrived. outdated: a newer snapshot was asked for (a gap, or a stream reopened
	// without a cursor) and checks refuse until it lands; since when.
	ready    bool
	outdated bool
	since    time.Time
	asked    uint64
}

// cachedItem keeps what a check needs next to the entitlement, so a check neither allocates nor converts.
type cachedItem struct {
	ent         *v1.Entitlement
	held        bool  // quantity > 0
	timeLimited bool  // active only before expires
	expires     int64 // Unix nanoseconds; 0 when unset
}

func newCachedItem(e *v1.Entitlement) cachedItem {
	item := cachedItem{
		ent:         e,
		held:        e.GetQuantity() > 0,
		timeLimited: e.GetKind() == v1.EntitlementKind_ENTITLEMENT_KIND_TIME_LIMITED,
	}
	if e.GetExpiresAt() != nil {
		item.expires = e.GetExpiresAt().AsTime().UnixNano()
	}
	return item
}

func (it cachedItem) active(now int64) bool {
	return it.held && (!it.timeLimited || now < it.expires)
}

// NewCache opens a cache of opts.Players (see Cache). Unless opts.NoWait, it waits until every player's snapshot
// has arrived, within ctx's deadline or else the client's default one (WithTimeout), and on failure closes the
// cache and returns why: the service's *Error (a bad key, codes.Unimplemented from a service without
// WatchEntitlements), ctx's end, or an *Error naming the option that is out of range.
func (c *Client) NewCache(ctx context.Context, opts CacheOptions) (*Cache, error) {
	maxStale := opts.MaxStaleness
	if maxStale == 0 {
		maxStale = DefaultMaxStaleness
	}
	switch {
	case maxStale < minMaxStaleness || maxStale > 3*maxHeartbeat:
		return nil, invalid("max_staleness: must be %v..%v, got %v", minMaxStaleness, 3*maxHeartbeat, maxStale)
	case opts.ProjectID < 0:
		return nil, invalid("project_id: must not be negative, got %d", opts.ProjectID)
	}
	if err := checkPlayers(opts.Players, 0); err != nil {
		return nil, err
	}
	heartbeat := min(max(time.Second, maxStale/3), maxHeartbeat)
	runCtx, cancel := context.WithCancel(context.Background())
	cache := &Cache{
		client:    c,
		projectID: c.project(opts.ProjectID),
		maxStale:  maxStale,
		heartbeat: heartbeat,
		onState:   opts.OnState,
		ctx:       runCtx,
		cancel:    cancel,
		done:      make(chan struct{}),
		base:      time.Now(),
		players:   make(map[string]*cachedPlayer, len(opts.Players)),
		inflight:  map[string]int{},
		initial:   slices.Clone(opts.Players),
		signal:    make(chan struct{}),
	}
	for _, id := range opts.Players {
		cache.players[id] = &cachedPlayer{}
	}
	go cache.run()
	if opts.NoWait {
		return cache, nil
	}
	waitCtx, done := c.unaryContext(ctx)
	defer done()
	if err := cache.Ready(waitCtx); err != nil {
		_ = cache.Close()
		return nil, err
	}
	return cache, nil
}

// Ready waits until the snapshot of every player given in CacheOptions.Players has arrived (players removed
// meanwhile excepted). It returns the error that stopped the cache, ErrClosed, or ctx's end as an *Error.
func (c *Cache) Ready(ctx context.Context) error {
	return c.waitFor(ctx, c.initial)
}

// Check tells whether a player holds an item, from memory: Active as CheckEntitlement would answer it now (a
// time-limited item stops being active at its expires_at on the local clock), and the entitlement when held.
//
// Errors: ErrNotCached (wrapped) for a player not held; a *StaleError when the cache cannot vouch for the answer;
// ErrClosed after Close; the service's *Error once it refused the stream for good (CacheFailed).
func (c *Cache) Check(userID, sku string) (CachedCheck, error) {
	now := time.Now()
	c.mu.RLock()
	p := c.players[userID]
	if err := c.refusal(p, userID, now); err != nil {
		c.mu.RUnlock()
		return CachedCheck{}, err
	}
	item, ok := p.items[sku]
	c.mu.RUnlock()
	if !ok {
		return CachedCheck{}, nil
	}
	active := item.active(now.UnixNano())
	ent := item.ent
	if active != ent.GetActive() {
		// The stored Active is as of the last change; the caller reads the entitlement as of now.
		ent = proto.Clone(ent).(*v1.Entitlement)
		ent.Active = active
	}
	return CachedCheck{Active: active, Entitlement: ent}, nil
}

// Entitlements returns everything the player holds, in sku order (byte-wise), expired time-limited items
// included with Active false: copies, with Active as of now. Errors as Check's.
func (c *Cache) Entitlements(userID string) ([]*v1.Entitlement, error) {
	now := time.Now()
	c.mu.RLock()
	p := c.players[userID]
	if err := c.refusal(p, userID, now); err != nil {
		c.mu.RUnlock()
		return nil, err
	}
	out := make([]*v1.Entitlement, 0, len(p.items))
	for _, item := range p.items {
		ent := proto.Clone(item.ent).(*v1.Entitlement)
		ent.Active = item.active(now.UnixNano())
		out = append(out, ent)
	}
	c.mu.RUnlock()
	slices.SortFunc(out, func(a, b *v1.Entitlement) int { return strings.Compare(a.GetSku(), b.GetSku()) })
	return out, nil
}

// refusal says why a check of p (nil when not held) cannot be answered now; nil when it can. Called under mu.
func (c *Cache) refusal(p *cachedPlayer, userID string, now time.Time) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if fatal := c.fatal.Load(); fatal != nil {
		return *fatal
	}
	if p == nil || !p.ready {
		return fmt.Errorf("%w: %q", ErrNotCached, userID)
	}
	if silent := now.Sub(c.base) - time.Duration(c.lastHeard.Load()); !c.up.Load() || silent > c.maxStale {
		return &StaleError{For: silent}
	}
	if p.outdated {
		return &StaleError{For: now.Sub(p.since), UserID: userID}
	}
	return nil
}

// Staleness returns how long ago the cache last heard from the service (a change, a snapshot or a heartbeat).
// Checks return a *StaleError once it passes MaxStaleness, or while the stream is down.
func (c *Cache) Staleness() time.Duration {
	return time.Since(c.base) - time.Duration(c.lastHeard.Load())
}

// Stats returns the cache's counters.
func (c *Cache) Stats() CacheStats {
	return CacheStats{
		ChangesApplied: c.changes.Load(),
		Snapshots:      c.snapshots.Load(),
		Reopenings:     c.reopens.Load(),
		Gaps:           c.gaps.Load(),
		Duplicates:     c.duplicates.Load(),
	}
}

// AddPlayers starts holding ids: the cache asks the service for their snapshots, and checks on them return
// ErrNotCached until each arrives (with wait, AddPlayers returns once they all have, or ctx ends). Players
// already held are left as they are. The whole cache holds at most MaxPlayersPerWatch players.
func (c *Cache) AddPlayers(ctx context.Context, ids []string, wait bool) error {
	if c.closed.Load() {
		return ErrClosed
	}
	c.mu.Lock()
	if err := checkPlayers(ids, len(c.players)); err != nil {
		c.mu.Unlock()
		return err
	}
	var ask []string
	for _, id := range ids {
		if c.players[id] != nil {
			continue
		}
		p := &cachedPlayer{}
		c.players[id] = p
		if c.stream != nil {
			c.ask(id, p)
			ask = append(ask, id)
		}
	}
	c.wake() // a cache without players has no stream yet: this opens it
	stream := c.stream
	c.mu.Unlock()
	if len(ask) > 0 {
		// A failed send means the stream broke: the next one asks for every player without a snapshot.
		_ = stream.AddPlayers(ask, true)
	}
	if !wait {
		return nil
	}
	return c.waitFor(ctx, ids)
}

// RemovePlayers stops holding ids, at once: checks on them return ErrNotCached.
func (c *Cache) RemovePlayers(ids []string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	c.mu.Lock()
	var drop []string
	for _, id := range ids {
		if c.players[id] != nil {
			delete(c.players, id)
			drop = append(drop, id)
		}
	}
	stream := c.stream
	c.mu.Unlock()
	if stream != nil && len(drop) > 0 {
		_ = stream.RemovePlayers(drop) // a broken stream's successor watches only the players held
	}
	return nil
}

// Close ends the stream and waits for the cache's goroutine; later calls return ErrClosed. It is safe to call
// more than once.
func (c *Cache) Close() error {
	if c.closed.Swap(true) {
		<-c.done
		return nil
	}
	c.cancel()
	<-c.done
	c.mu.Lock()
	c.wake()
	c.mu.Unlock()
	c.setState(CacheClosed, nil)
	return nil
}

// waitFor waits until each of ids is held with a snapshot, or no longer held.
func (c *Cache) waitFor(ctx context.Context, ids []string) error {
	for {
		c.mu.RLock()
		pending := false
		for _, id := range ids {
			if p := c.players[id]; p != nil && !p.ready {
				pending = true
				break
			}
		}
		signal := c.signal
		c.mu.RUnlock()
		switch {
		case c.closed.Load():
			return ErrClosed
		case c.fatal.Load() != nil:
			return *c.fatal.Load()
		case !pending && (len(ids) == 0 || c.up.Load()):
			// Read, and the stream current (its first heartbeat came): checks on them answer. (No players: no
			// stream to wait for.)
			return nil
		}
		select {
		case <-ctx.Done():
			return translate(ctx.Err())
		case <-signal:
		}
	}
}

// ask records that a snapshot of p (held as id) is asked for on the current stream. Called under mu (write).
func (c *Cache) ask(id string, p *cachedPlayer) {
	p.asked = c.session
	c.inflight[id]++
}

// wake tells the waiters to look again. Called under mu (write).
func (c *Cache) wake() {
	close(c.signal)
	c.signal = make(chan struct{})
}

// checkPlayers validates ids as the service would, and that held+len(ids) stays within MaxPlayersPerWatch.
func checkPlayers(ids []string, held int) error {
	if held+len(ids) > MaxPlayersPerWatch {
		return invalid("players: at most %d players per cache, got %d", MaxPlayersPerWatch, held+len(ids))
	}
	for i, id := range ids {
		if problem := identifierProblem(id); problem != "" {
			return invalid("players[%d]: %s", i, problem)
		}
	}
	return nil
}

// identifierProblem says what makes id unusable as a player id ("" when it is fine): 1..256 bytes of UTF-8
// with no control character (U+0000-U+001F, U+007F-U+009F), the service's rule.
func identifierProblem(id string) string {
	switch {
	case id == "":
		return "is required"
	case len(id) > 256:
		return "must be at most 256 bytes"
	case !utf8.ValidString(id):
		return "is not valid UTF-8"
	}
	for _, r := range id {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return "must not contain control characters"
		}
	}
	return ""
}

// invalid returns an *Error with codes.InvalidArgument for a value refused before any call.
func invalid(format string, args ...any) *Error {
	return &Error{Code: codes.InvalidArgument, Message: fmt.Sprintf(format, args...)}
}
