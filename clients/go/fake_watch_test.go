package entitlements_test

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// watchServer scripts WatchEntitlements: each stream the client opens arrives on opens as a watchConn, through
// which the test reads what the client sent and decides what the service sends and how the stream ends.
type watchServer struct {
	opens chan *watchConn
}

// watchConn is one open WatchEntitlements stream on the server side.
type watchConn struct {
	first    *v1.WatchEntitlementsRequest
	received chan *v1.WatchEntitlementsRequest // the client's later messages
	send     chan *v1.WatchEntitlementsResponse
	end      chan error // the status the stream ends with (nil: OK)
	gone     chan struct{}
}

func newWatchServer(f *fakeService) *watchServer {
	w := &watchServer{opens: make(chan *watchConn, 16)}
	f.watch = w.handle
	return w
}

func (w *watchServer) handle(stream grpc.BidiStreamingServer[v1.WatchEntitlementsRequest, v1.WatchEntitlementsResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	conn := &watchConn{
		first:    first,
		received: make(chan *v1.WatchEntitlementsRequest, 64),
		send:     make(chan *v1.WatchEntitlementsResponse, 64),
		end:      make(chan error, 1),
		gone:     make(chan struct{}),
	}
	defer close(conn.gone)
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				return
			}
			conn.received <- msg
		}
	}()
	w.opens <- conn
	for {
		select {
		case msg := <-conn.send:
			if err := stream.Send(msg); err != nil {
				return err
			}
		case err := <-conn.end:
			return err
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

// next returns the next stream the client opens, failing the test after 5 s.
func (w *watchServer) next(t *testing.T) *watchConn {
	t.Helper()
	select {
	case conn := <-w.opens:
		return conn
	case <-time.After(5 * time.Second):
		t.Fatal("the client did not open a watch stream")
		return nil
	}
}

// none fails the test when the client opens a stream within d.
func (w *watchServer) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case conn := <-w.opens:
		t.Fatalf("unexpected watch stream opened: %v", conn.first)
	case <-time.After(d):
	}
}

// message returns the client's next later message on the stream, failing the test after 5 s.
func (c *watchConn) message(t *testing.T) *v1.WatchEntitlementsRequest {
	t.Helper()
	select {
	case msg := <-c.received:
		return msg
	case <-time.After(5 * time.Second):
		t.Fatal("the client sent nothing more on the watch stream")
		return nil
	}
}

func (c *watchConn) push(msgs ...*v1.WatchEntitlementsResponse) {
	for _, m := range msgs {
		c.send <- m
	}
}

// sortedIDs returns ids sorted, for comparisons that do not depend on map order.
func sortedIDs(ids []string) []string {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}

func consumable(user, sku string, quantity int64) *v1.Entitlement {
	return &v1.Entitlement{
		UserId: user, Sku: sku, Kind: v1.EntitlementKind_ENTITLEMENT_KIND_CONSUMABLE, Quantity: quantity,
		Active: quantity > 0,
	}
}

func timeLimited(user, sku string, expires time.Time) *v1.Entitlement {
	return &v1.Entitlement{
		UserId: user, Sku: sku, Kind: v1.EntitlementKind_ENTITLEMENT_KIND_TIME_LIMITED, Quantity: 1,
		ExpiresAt: timestamppb.New(expires), Active: time.Now().Before(expires),
	}
}

func snapshotOf(user string, version int64, ents ...*v1.Entitlement) *v1.WatchEntitlementsResponse {
	return &v1.WatchEntitlementsResponse{Event: &v1.WatchEntitlementsResponse_Snapshot{
		Snapshot: &v1.PlayerSnapshot{UserId: user, Entitlements: ents, Version: version},
	}}
}

// changeOf is a change of ent's player and sku to ent (nil: removed, then user and sku name it).
func changeOf(user, sku string, version int64, ent *v1.Entitlement, cursor string) *v1.WatchEntitlementsResponse {
	return &v1.WatchEntitlementsResponse{
		Event: &v1.WatchEntitlementsResponse_Change{Change: &v1.EntitlementChange{
			UserId: user, Sku: sku, Entitlement: ent, Version: version, Operation: "grant",
			ChangedAt: timestamppb.Now(),
		}},
		Cursor: cursor,
	}
}

func heartbeatAt(cursor string) *v1.WatchEntitlementsResponse {
	return &v1.WatchEntitlementsResponse{
		Event:  &v1.WatchEntitlementsResponse_Heartbeat{Heartbeat: &v1.Heartbeat{SentAt: timestamppb.Now()}},
		Cursor: cursor,
	}
}

// eventually polls cond every millisecond until it holds, failing the test after 5 s with what.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
