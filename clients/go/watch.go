package entitlements

import (
	"context"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// MaxIDsPerWatchMessage and MaxPlayersPerWatch are the service's limits on a WatchEntitlements stream: players
// added or removed by one message, and players watched at once.
const (
	MaxIDsPerWatchMessage = 10_000
	MaxPlayersPerWatch    = 100_000
)

// WatchStream is one open WatchEntitlements call: Recv reads the changes, snapshots and heartbeats; AddPlayers
// and RemovePlayers change the players watched while it is open; Close ends it. Recv may run in one goroutine
// while others call AddPlayers and RemovePlayers. The stream is not reopened when it breaks: reopen it with the
// last cursor received (the Cache does all of that).
type WatchStream struct {
	stream grpc.BidiStreamingClient[v1.WatchEntitlementsRequest, v1.WatchEntitlementsResponse]
	cancel context.CancelFunc
	sendMu sync.Mutex // grpc-go allows one sender at a time
}

// WatchEntitlements opens the change stream of one project with first as its first message (project, cursor,
// all_players or the first players, heartbeat interval; see the .proto). It has no default deadline: the
// stream lasts until ctx ends, Close is called or the service ends it. When first.ProjectId is 0, the
// client's project is used. first is not modified.
//
// Errors the service gives about the first message (a bad cursor, a cursor too old: codes.OutOfRange, a key
// without the read scope) arrive on the first Recv, as an *Error.
func (c *Client) WatchEntitlements(
	ctx context.Context, first *v1.WatchEntitlementsRequest, opts ...grpc.CallOption,
) (*WatchStream, error) {
	if c.fillsProject(first.GetProjectId()) {
		first = cloneOf(first)
		first.ProjectId = c.projectID
	}
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.stub.WatchEntitlements(ctx, opts...)
	if err != nil {
		cancel()
		return nil, translate(err)
	}
	w := &WatchStream{stream: stream, cancel: cancel}
	if err := w.Send(cloneOf(first)); err != nil {
		cancel()
		return nil, err
	}
	return w, nil
}

// Recv returns the next message: a change (with the cursor after it), a snapshot, or a heartbeat (with the
// current cursor). It returns an *Error when the stream fails (codes.Unavailable: reopen it with the last
// cursor; codes.OutOfRange: the cursor is too old, read the players again) and io.EOF if the service ended it
// without an error.
func (w *WatchStream) Recv() (*v1.WatchEntitlementsResponse, error) {
	resp, err := w.stream.Recv()
	if err == io.EOF {
		w.cancel()
		return nil, io.EOF
	}
	if err != nil {
		w.cancel()
		return nil, translate(err)
	}
	return resp, nil
}

// Send sends a later message (only add_user_ids, remove_user_ids and snapshot may be set). A failed send means
// the stream is over: Recv returns why.
func (w *WatchStream) Send(req *v1.WatchEntitlementsRequest) error {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	if err := w.stream.Send(req); err != nil {
		if err == io.EOF {
			// grpc-go reports a stream the service already ended as io.EOF on Send; the status is Recv's.
			return &Error{Code: codes.Unavailable, Message: "the watch stream has ended", cause: err}
		}
		return translate(err)
	}
	return nil
}

// AddPlayers starts watching ids, in messages of at most MaxIDsPerWatchMessage; with snapshot, the service
// answers with one PlayerSnapshot per player.
func (w *WatchStream) AddPlayers(ids []string, snapshot bool) error {
	for _, chunk := range chunks(ids, MaxIDsPerWatchMessage) {
		if err := w.Send(&v1.WatchEntitlementsRequest{AddUserIds: chunk, Snapshot: snapshot}); err != nil {
			return err
		}
	}
	return nil
}

// RemovePlayers stops watching ids, in messages of at most MaxIDsPerWatchMessage.
func (w *WatchStream) RemovePlayers(ids []string) error {
	for _, chunk := range chunks(ids, MaxIDsPerWatchMessage) {
		if err := w.Send(&v1.WatchEntitlementsRequest{RemoveUserIds: chunk}); err != nil {
			return err
		}
	}
	return nil
}

// Close cancels the call. It is safe to call more than once and after the stream ended.
func (w *WatchStream) Close() { w.cancel() }

// chunks splits ids into slices of at most n (none for no ids).
func chunks(ids []string, n int) [][]string {
	var out [][]string
	for len(ids) > n {
		out = append(out, ids[:n:n])
		ids = ids[n:]
	}
	if len(ids) > 0 {
		out = append(out, ids)
	}
	return out
}
