package entitlements_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	entitlements "github.com/xsolla-entitlements/entitlements/clients/go"
	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// stateLog records what a cache tells its OnState callback.
type stateLog struct {
	mu     sync.Mutex
	states []entitlements.CacheState
}

func (l *stateLog) record(s entitlements.CacheState, _ error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.states = append(l.states, s)
}

func (l *stateLog) get() []entitlements.CacheState {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.states)
}

// openCache opens a cache of players on a scripted server, answers the first stream with snapshots of every
// player (gold_100 quantity 5 for "alice", nothing for the others, versions 3 and 0) and a heartbeat at
// cursor "c0", and returns the cache once ready, with that stream.
func openCache(
	t *testing.T, players []string, opts entitlements.CacheOptions,
) (*entitlements.Cache, *watchServer, *watchConn, *fakeService) {
	t.Helper()
	f := &fakeService{}
	ws := newWatchServer(f)
	client := newClient(t, serve(t, f), entitlements.WithProjectID(7))
	opts.Players = players
	type opened struct {
		cache *entitlements.Cache
		err   error
	}
	result := make(chan opened, 1)
	go func() {
		cache, err := client.NewCache(context.Background(), opts)
		result <- opened{cache, err}
	}()
	conn := ws.next(t)
	for _, id := range players {
		if id == "alice" {
			conn.push(snapshotOf(id, 3, consumable(id, "gold_100", 5)))
		} else {
			conn.push(snapshotOf(id, 0))
		}
	}
	conn.push(heartbeatAt("c0"))
	got := <-result
	if got.err != nil {
		t.Fatal(got.err)
	}
	t.Cleanup(func() { _ = got.cache.Close() })
	return got.cache, ws, conn, f
}

func quantityOf(t *testing.T, cache *entitlements.Cache, user, sku string) int64 {
	t.Helper()
	got, err := cache.Check(user, sku)
	if err != nil {
		t.Fatal(err)
	}
	return got.Entitlement.GetQuantity()
}

// TestCacheSnapshotThenChanges: the first stream asks for a snapshot of every player, with the project and the
// heartbeat interval; checks answer from the snapshots, then from each change; a player not added is NotCached.
func TestCacheSnapshotThenChanges(t *testing.T) {
	cache, _, conn, _ := openCache(t, []string{"alice", "bob"}, entitlements.CacheOptions{MaxStaleness: 6 * time.Second})
	if conn.first.GetProjectId() != 7 || !conn.first.GetSnapshot() || conn.first.GetCursor() != "" ||
		conn.first.GetHeartbeatInterval().AsDuration() != 2*time.Second {
		t.Fatalf("first message: %v", conn.first)
	}
	if got := sortedIDs(conn.first.GetAddUserIds()); !slices.Equal(got, []string{"alice", "bob"}) {
		t.Fatalf("players asked: %v", got)
	}
	got, err := cache.Check("alice", "gold_100")
	if err != nil || !got.Active || got.Entitlement.GetQuantity() != 5 {
		t.Fatalf("check: %+v, %v", got, err)
	}
	if got, err := cache.Check("bob", "gold_100"); err != nil || got.Active || got.Entitlement != nil {
		t.Fatalf("check of an item not held: %+v, %v", got, err)
	}
	conn.push(changeOf("bob", "sword", 1, consumable("bob", "sword", 1), "c1"))
	conn.push(changeOf("alice", "gold_100", 4, consumable("alice", "gold_100", 7), "c2"))
	eventually(t, "alice's change", func() bool { return quantityOf(t, cache, "alice", "gold_100") == 7 })
	conn.push(changeOf("bob", "sword", 2, nil, "c3"))
	eventually(t, "bob's revoke", func() bool {
		got, err := cache.Check("bob", "sword")
		return err == nil && !got.Active && got.Entitlement == nil
	})
	conn.push(changeOf("alice", "armor", 5, consumable("alice", "armor", 1), "c4"))
	eventually(t, "alice's armor", func() bool { return quantityOf(t, cache, "alice", "armor") == 1 })
	ents, err := cache.Entitlements("alice")
	if err != nil || len(ents) != 2 || ents[0].GetSku() != "armor" || ents[1].GetSku() != "gold_100" {
		t.Fatalf("entitlements: %v, %v", ents, err)
	}
	if _, err := cache.Check("carol", "gold_100"); !errors.Is(err, entitlements.ErrNotCached) {
		t.Fatalf("check of a player not added: %v", err)
	}
	if stats := cache.Stats(); stats.ChangesApplied != 4 || stats.Snapshots != 2 || stats.Reopenings != 0 {
		t.Fatalf("stats: %+v", stats)
	}
}

// TestCacheResumesWithCursor: a stream that fails UNAVAILABLE is reopened with the last cursor and the players
// held, without snapshots; checks are refused as stale until the new stream is heard from, then answer again.
func TestCacheResumesWithCursor(t *testing.T) {
	var log stateLog
	cache, ws, conn, _ := openCache(t, []string{"alice", "bob"}, entitlements.CacheOptions{OnState: log.record})
	conn.push(changeOf("alice", "gold_100", 4, consumable("alice", "gold_100", 6), "c1"))
	eventually(t, "the change", func() bool { return quantityOf(t, cache, "alice", "gold_100") == 6 })
	conn.end <- status.Error(codes.Unavailable, "replica shutting down")

	next := ws.next(t)
	if next.first.GetCursor() != "c1" || next.first.GetSnapshot() || next.first.GetProjectId() != 7 {
		t.Fatalf("resumed with %v", next.first)
	}
	if got := sortedIDs(next.first.GetAddUserIds()); !slices.Equal(got, []string{"alice", "bob"}) {
		t.Fatalf("players resumed: %v", got)
	}
	var stale *entitlements.StaleError
	if _, err := cache.Check("alice", "gold_100"); !errors.As(err, &stale) || stale.UserID != "" {
		t.Fatalf("check while resuming: %v", err)
	}
	next.push(changeOf("alice", "gold_100", 5, consumable("alice", "gold_100", 9), "c2"))
	if _, err := cache.Check("alice", "gold_100"); !errors.As(err, &stale) {
		t.Fatalf("check before the resumed stream's first heartbeat (the changes since the cursor may not all be in): %v", err)
	}
	next.push(heartbeatAt("c2"))
	eventually(t, "the change after resuming", func() bool {
		got, err := cache.Check("alice", "gold_100")
		return err == nil && got.Entitlement.GetQuantity() == 9
	})
	want := []entitlements.CacheState{
		entitlements.CacheConnected, entitlements.CacheResuming, entitlements.CacheConnected,
	}
	if got := log.get(); !slices.Equal(got, want) {
		t.Fatalf("states: %v", got)
	}
	if stats := cache.Stats(); stats.Reopenings != 1 || stats.ChangesApplied != 2 || stats.Snapshots != 2 {
		t.Fatalf("stats: %+v", stats)
	}
}

// TestCacheOutOfRangeReadsAgain: OUT_OF_RANGE (the cursor is too old) reopens without a cursor and with
// snapshots of every player; each player is refused until its snapshot replaces what the cache held.
func TestCacheOutOfRangeReadsAgain(t *testing.T) {
	cache, ws, conn, _ := openCache(t, []string{"alice", "bob"}, entitlements.CacheOptions{})
	conn.end <- status.Error(codes.OutOfRange, "cursor: older than the history kept")

	next := ws.next(t)
	if next.first.GetCursor() != "" || !next.first.GetSnapshot() {
		t.Fatalf("reopened with %v", next.first)
	}
	if got := sortedIDs(next.first.GetAddUserIds()); !slices.Equal(got, []string{"alice", "bob"}) {
		t.Fatalf("players read again: %v", got)
	}
	next.push(snapshotOf("bob", 4, consumable("bob", "sword", 1)), heartbeatAt("c5"))
	eventually(t, "bob's snapshot", func() bool {
		got, err := cache.Check("bob", "sword")
		return err == nil && got.Active
	})
	var stale *entitlements.StaleError
	if _, err := cache.Check("alice", "gold_100"); !errors.As(err, &stale) || stale.UserID != "alice" {
		t.Fatalf("check of a player whose snapshot is on its way: %v", err)
	}
	next.push(snapshotOf("alice", 9))
	eventually(t, "alice's snapshot", func() bool {
		got, err := cache.Check("alice", "gold_100")
		return err == nil && got.Entitlement == nil
	})
	next.push(changeOf("alice", "gold_100", 10, consumable("alice", "gold_100", 1), "c9"))
	eventually(t, "the change after the snapshot", func() bool { return quantityOf(t, cache, "alice", "gold_100") == 1 })
}

// TestCacheGapReadsPlayerAgain: a change whose version jumps asks for the player's snapshot on the same stream
// and refuses the player until it arrives; a change at or below the version is ignored and counted.
func TestCacheGapReadsPlayerAgain(t *testing.T) {
	cache, _, conn, _ := openCache(t, []string{"alice", "bob"}, entitlements.CacheOptions{})
	conn.push(changeOf("alice", "gold_100", 3, consumable("alice", "gold_100", 99), "c1"))
	conn.push(changeOf("alice", "gold_100", 6, consumable("alice", "gold_100", 50), "c2"))
	msg := conn.message(t)
	if !slices.Equal(msg.GetAddUserIds(), []string{"alice"}) || !msg.GetSnapshot() || msg.GetCursor() != "" {
		t.Fatalf("after the gap the client sent %v", msg)
	}
	var stale *entitlements.StaleError
	if _, err := cache.Check("alice", "gold_100"); !errors.As(err, &stale) || stale.UserID != "alice" {
		t.Fatalf("check of a player after a gap: %v", err)
	}
	if _, err := cache.Check("bob", "gold_100"); err != nil {
		t.Fatalf("another player is unaffected: %v", err)
	}
	conn.push(snapshotOf("alice", 6, consumable("alice", "gold_100", 50)))
	eventually(t, "the snapshot after the gap", func() bool {
		got, err := cache.Check("alice", "gold_100")
		return err == nil && got.Entitlement.GetQuantity() == 50
	})
	if stats := cache.Stats(); stats.Gaps != 1 || stats.Duplicates != 1 || stats.ChangesApplied != 0 {
		t.Fatalf("stats: %+v", stats)
	}
}

// TestCacheStaleWhenSilent: a stream silent for longer than MaxStaleness makes checks fail Stale (naming how long),
// reports CacheStale, and is reopened with its cursor; the first message of the new stream makes it answer again.
func TestCacheStaleWhenSilent(t *testing.T) {
	var log stateLog
	cache, ws, conn, _ := openCache(t, []string{"alice"}, entitlements.CacheOptions{
		MaxStaleness: 2 * time.Second, OnState: log.record,
	})
	if conn.first.GetHeartbeatInterval().AsDuration() != time.Second {
		t.Fatalf("heartbeat interval asked: %v", conn.first.GetHeartbeatInterval())
	}
	if s := cache.Staleness(); s < 0 || s > time.Second {
		t.Fatalf("staleness just after a heartbeat: %v", s)
	}
	next := ws.next(t) // the silent stream is given up after 2 s
	if next.first.GetCursor() != "c0" {
		t.Fatalf("reopened with %v", next.first)
	}
	var stale *entitlements.StaleError
	if _, err := cache.Check("alice", "gold_100"); !errors.As(err, &stale) || stale.For < 2*time.Second {
		t.Fatalf("check after 2 s of silence: %v", err)
	}
	next.push(heartbeatAt("c0"))
	eventually(t, "answers after the heartbeat", func() bool {
		_, err := cache.Check("alice", "gold_100")
		return err == nil
	})
	want := []entitlements.CacheState{
		entitlements.CacheConnected, entitlements.CacheStale, entitlements.CacheResuming, entitlements.CacheConnected,
	}
	if got := log.get(); !slices.Equal(got, want) {
		t.Fatalf("states: %v", got)
	}
}

// TestCacheReopensAMuteStream: a stream that the service accepts but never answers is given up after
// MaxStaleness and opened again, instead of waiting forever.
func TestCacheReopensAMuteStream(t *testing.T) {
	f := &fakeService{}
	ws := newWatchServer(f)
	client := newClient(t, serve(t, f))
	cache, err := client.NewCache(context.Background(), entitlements.CacheOptions{
		Players: []string{"alice"}, MaxStaleness: 2 * time.Second, NoWait: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	mute := ws.next(t)
	next := ws.next(t)
	if !next.first.GetSnapshot() || next.first.GetAddUserIds()[0] != "alice" {
		t.Fatalf("reopened with %v", next.first)
	}
	select {
	case <-mute.gone:
	case <-time.After(time.Second):
		t.Fatal("the mute stream was not cancelled")
	}
	next.push(snapshotOf("alice", 1), heartbeatAt("c1"))
	if err := cache.Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
	if stats := cache.Stats(); stats.Reopenings != 1 {
		t.Fatalf("stats: %+v", stats)
	}
}

// TestCacheAuthErrorStops: UNAUTHENTICATED ends the cache without reopening: NewCache returns it, and with
// NoWait every later check returns it.
func TestCacheAuthErrorStops(t *testing.T) {
	f := &fakeService{}
	ws := newWatchServer(f)
	client := newClient(t, serve(t, f))
	go func() { ws.next(t).end <- status.Error(codes.Unauthenticated, "unknown API key") }()
	_, err := client.NewCache(context.Background(), entitlements.CacheOptions{Players: []string{"alice"}})
	if !entitlements.IsUnauthenticated(err) {
		t.Fatalf("NewCache: %v", err)
	}
	ws.none(t, 50*time.Millisecond)

	var log stateLog
	cache, err := client.NewCache(context.Background(), entitlements.CacheOptions{
		Players: []string{"alice"}, NoWait: true, OnState: log.record,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	ws.next(t).end <- status.Error(codes.PermissionDenied, "the key lacks the read scope")
	eventually(t, "the cache to stop", func() bool {
		_, err := cache.Check("alice", "gold_100")
		return entitlements.IsPermissionDenied(err)
	})
	ws.none(t, 100*time.Millisecond)
	if got := log.get(); !slices.Equal(got, []entitlements.CacheState{entitlements.CacheFailed}) {
		t.Fatalf("states: %v", got)
	}
	if err := cache.AddPlayers(context.Background(), []string{"bob"}, true); !entitlements.IsPermissionDenied(err) {
		t.Fatalf("AddPlayers with wait on a stopped cache: %v", err)
	}
}

// TestCacheAddRemovePlayers: added players are asked for with a snapshot and NotCached until it arrives (or
// AddPlayers waits for it); removed players are dropped at once and the service is told.
func TestCacheAddRemovePlayers(t *testing.T) {
	cache, _, conn, _ := openCache(t, []string{"alice"}, entitlements.CacheOptions{})
	if err := cache.AddPlayers(context.Background(), []string{"bob", "alice"}, false); err != nil {
		t.Fatal(err)
	}
	msg := conn.message(t)
	if !slices.Equal(msg.GetAddUserIds(), []string{"bob"}) || !msg.GetSnapshot() {
		t.Fatalf("add sent %v", msg)
	}
	if _, err := cache.Check("bob", "x"); !errors.Is(err, entitlements.ErrNotCached) {
		t.Fatalf("check before the snapshot: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cache.AddPlayers(context.Background(), []string{"carol"}, true) }()
	if msg := conn.message(t); !slices.Equal(msg.GetAddUserIds(), []string{"carol"}) {
		t.Fatalf("add sent %v", msg)
	}
	conn.push(snapshotOf("carol", 1, consumable("carol", "x", 2)))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if quantityOf(t, cache, "carol", "x") != 2 {
		t.Fatal("carol's snapshot not applied when AddPlayers returned")
	}
	if err := cache.RemovePlayers([]string{"alice", "nobody"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cache.Check("alice", "gold_100"); !errors.Is(err, entitlements.ErrNotCached) {
		t.Fatalf("check after removal: %v", err)
	}
	if msg := conn.message(t); !slices.Equal(msg.GetRemoveUserIds(), []string{"alice"}) {
		t.Fatalf("remove sent %v", msg)
	}
}

// TestCacheWithoutPlayersOpensOnAdd: a cache made without players opens no stream until one is added, and is
// ready at once.
func TestCacheWithoutPlayersOpensOnAdd(t *testing.T) {
	f := &fakeService{}
	ws := newWatchServer(f)
	client := newClient(t, serve(t, f))
	cache, err := client.NewCache(context.Background(), entitlements.CacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	ws.none(t, 50*time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- cache.AddPlayers(context.Background(), []string{"dave"}, true) }()
	conn := ws.next(t)
	if !slices.Equal(conn.first.GetAddUserIds(), []string{"dave"}) || !conn.first.GetSnapshot() {
		t.Fatalf("first message %v", conn.first)
	}
	conn.push(snapshotOf("dave", 2, consumable("dave", "gem", 3)), heartbeatAt("c1"))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if quantityOf(t, cache, "dave", "gem") != 3 {
		t.Fatal("dave's snapshot not applied")
	}
}

// TestCacheReAddedPlayerWaitsForItsLastSnapshot: a player removed and added back while its first snapshot is on
// the way is answered only from the snapshot of the second add (changes made while it was removed are not sent).
func TestCacheReAddedPlayerWaitsForItsLastSnapshot(t *testing.T) {
	cache, _, conn, _ := openCache(t, []string{"alice"}, entitlements.CacheOptions{})
	ctx := context.Background()
	if err := cache.AddPlayers(ctx, []string{"erin"}, false); err != nil {
		t.Fatal(err)
	}
	if err := cache.RemovePlayers([]string{"erin"}); err != nil {
		t.Fatal(err)
	}
	if err := cache.AddPlayers(ctx, []string{"erin"}, false); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		conn.message(t) // add, remove, add
	}
	conn.push(snapshotOf("erin", 3, consumable("erin", "gem", 1)))
	// A later message applied means the first snapshot was handled: messages are applied in order.
	conn.push(changeOf("alice", "gold_100", 4, consumable("alice", "gold_100", 6), "c1"))
	eventually(t, "alice's change", func() bool { return quantityOf(t, cache, "alice", "gold_100") == 6 })
	if _, err := cache.Check("erin", "gem"); !errors.Is(err, entitlements.ErrNotCached) {
		t.Fatalf("answered from the first add's snapshot: %v", err)
	}
	conn.push(snapshotOf("erin", 5))
	eventually(t, "the second snapshot", func() bool {
		got, err := cache.Check("erin", "gem")
		return err == nil && got.Entitlement == nil
	})
}

// TestCacheRefusesBadInput: options and player ids out of the service's limits are INVALID_ARGUMENT naming them,
// before anything is sent.
func TestCacheRefusesBadInput(t *testing.T) {
	f := &fakeService{}
	ws := newWatchServer(f)
	client := newClient(t, serve(t, f))
	cases := map[string]entitlements.CacheOptions{
		"max_staleness: must be 2s..15m0s":           {MaxStaleness: time.Second},
		"players[1]: is required":                    {Players: []string{"a", ""}},
		"players[0]: must not contain control chars": {Players: []string{"a\n"}},
		"players[0]: must be at most 256 bytes":      {Players: []string{string(make([]byte, 257))}},
		"project_id: must not be negative":           {ProjectID: -1},
	}
	for want, opts := range cases {
		_, err := client.NewCache(context.Background(), opts)
		var e *entitlements.Error
		if !errors.As(err, &e) || e.Code != codes.InvalidArgument || len(e.Message) < 10 || e.Message[:10] != want[:10] {
			t.Errorf("%s: got %v", want, err)
		}
	}
	ws.none(t, 20*time.Millisecond)
}

// TestCacheExpiresOnTime: a time-limited item stops being active at its expires_at on the local clock, without
// a change.
func TestCacheExpiresOnTime(t *testing.T) {
	cache, _, conn, _ := openCache(t, []string{"alice"}, entitlements.CacheOptions{})
	expires := time.Now().Add(300 * time.Millisecond)
	conn.push(changeOf("alice", "pass", 4, timeLimited("alice", "pass", expires), "c1"))
	eventually(t, "the pass", func() bool {
		got, err := cache.Check("alice", "pass")
		return err == nil && got.Active && got.Entitlement.GetActive()
	})
	time.Sleep(time.Until(expires) + 10*time.Millisecond)
	got, err := cache.Check("alice", "pass")
	if err != nil || got.Active || got.Entitlement.GetActive() || got.Entitlement.GetQuantity() != 1 {
		t.Fatalf("after expires_at: %+v, %v", got, err)
	}
	ents, _ := cache.Entitlements("alice")
	if len(ents) != 2 || ents[1].GetSku() != "pass" || ents[1].GetActive() {
		t.Fatalf("entitlements after expires_at: %v", ents)
	}
}

// TestCacheClose: after Close every call returns ErrClosed and the stream is cancelled.
func TestCacheClose(t *testing.T) {
	cache, ws, conn, _ := openCache(t, []string{"alice"}, entitlements.CacheOptions{})
	if err := cache.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cache.Check("alice", "gold_100"); !errors.Is(err, entitlements.ErrClosed) {
		t.Fatalf("check after close: %v", err)
	}
	if err := cache.AddPlayers(context.Background(), []string{"bob"}, false); !errors.Is(err, entitlements.ErrClosed) {
		t.Fatalf("AddPlayers after close: %v", err)
	}
	select {
	case <-conn.gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream outlived Close")
	}
	ws.none(t, 50*time.Millisecond)
	if err := cache.Close(); err != nil {
		t.Fatal("a second Close:", err)
	}
}

// TestCacheConcurrentChecks: checks from several goroutines while changes apply see every version in order
// (quantities never go down) and end on the last one (run with -race).
func TestCacheConcurrentChecks(t *testing.T) {
	cache, _, conn, _ := openCache(t, []string{"alice", "bob"}, entitlements.CacheOptions{})
	const n = 500
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := int64(0)
			for !stop.Load() {
				got, err := cache.Check("alice", "gold_100")
				if err != nil {
					errs <- err
					return
				}
				if q := got.Entitlement.GetQuantity(); q < last {
					errs <- fmt.Errorf("quantity went back from %d to %d", last, q)
					return
				} else {
					last = q
				}
				_, _ = cache.Entitlements("bob")
			}
		}()
	}
	for i := int64(1); i <= n; i++ {
		conn.push(changeOf("alice", "gold_100", 3+i, consumable("alice", "gold_100", 5+i), fmt.Sprint("c", i)))
	}
	eventually(t, "every change", func() bool { return cache.Stats().ChangesApplied == n })
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := quantityOf(t, cache, "alice", "gold_100"); got != 5+n {
		t.Fatalf("final quantity %d", got)
	}
}

// BenchmarkCacheCheck measures Cache.Check over 1,000 players x 20 skus, hits and misses, from every core.
func BenchmarkCacheCheck(b *testing.B) {
	f := &fakeService{}
	ws := newWatchServer(f)
	addr := serve(b, f)
	client, err := entitlements.New(addr, entitlements.WithInsecure())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	players := make([]string, 1000)
	for i := range players {
		players[i] = fmt.Sprintf("player-%04d", i)
	}
	opened := make(chan *entitlements.Cache, 1)
	go func() {
		cache, err := client.NewCache(context.Background(), entitlements.CacheOptions{Players: players})
		if err != nil {
			b.Error(err)
		}
		opened <- cache
	}()
	conn := <-ws.opens
	for _, id := range players {
		ents := make([]*v1.Entitlement, 20)
		for j := range ents {
			ents[j] = consumable(id, fmt.Sprintf("sku-%02d", j), 1)
		}
		conn.push(snapshotOf(id, 1, ents...))
	}
	conn.push(heartbeatAt("c0"))
	cache := <-opened
	if cache == nil {
		b.FailNow()
	}
	defer cache.Close()
	beat := time.NewTicker(500 * time.Millisecond) // a live stream: the cache stays current however long b runs
	done := make(chan struct{})
	defer func() { beat.Stop(); close(done) }()
	go func() {
		for {
			select {
			case <-done:
				return
			case <-beat.C:
				conn.push(heartbeatAt("c0"))
			}
		}
	}()
	skus := make([]string, 40) // half of them not held
	for j := range skus {
		skus[j] = fmt.Sprintf("sku-%02d", j)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := cache.Check(players[i%len(players)], skus[i%len(skus)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// BenchmarkCacheCheckBaseline is what any thread-safe, clock-aware check costs: the same lookups in two plain
// maps under a sync.RWMutex with one clock reading, no staleness or expiry rules. BenchmarkCacheCheck over this
// is the cache's own overhead.
func BenchmarkCacheCheckBaseline(b *testing.B) {
	var mu sync.RWMutex
	players := make([]string, 1000)
	held := make(map[string]map[string]*v1.Entitlement, len(players))
	for i := range players {
		players[i] = fmt.Sprintf("player-%04d", i)
		items := make(map[string]*v1.Entitlement, 20)
		for j := range 20 {
			items[fmt.Sprintf("sku-%02d", j)] = consumable(players[i], fmt.Sprintf("sku-%02d", j), 1)
		}
		held[players[i]] = items
	}
	skus := make([]string, 40)
	for j := range skus {
		skus[j] = fmt.Sprintf("sku-%02d", j)
	}
	var sink atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i, found := 0, int64(0)
		for pb.Next() {
			now := time.Now()
			mu.RLock()
			if e := held[players[i%len(players)]][skus[i%len(skus)]]; e != nil && now.Unix() > 0 {
				found++
			}
			mu.RUnlock()
			i++
		}
		sink.Add(found)
	})
}
