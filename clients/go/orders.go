package entitlements

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// DefaultMaxWait is the service's default max_wait of GetOrderStatus. FollowOrder assumes it as the overall
// time to follow an order whose request leaves MaxWait unset.
const DefaultMaxWait = 10 * time.Minute

// OrderStatusStream is one open GetOrderStatus call. Read it with Recv until io.EOF; Close it to stop early.
type OrderStatusStream struct {
	stream grpc.ServerStreamingClient[v1.OrderStatusUpdate]
	cancel context.CancelFunc
}

// Recv returns the next update, io.EOF after the last one (a terminal status, or the message with TimedOut
// after max_wait), or an *Error.
func (s *OrderStatusStream) Recv() (*v1.OrderStatusUpdate, error) {
	update, err := s.stream.Recv()
	if err == io.EOF {
		s.cancel()
		return nil, io.EOF
	}
	if err != nil {
		s.cancel()
		return nil, translate(err)
	}
	return update, nil
}

// Close cancels the call (the service stops following the order for this stream). It is safe to call more
// than once and after the stream ended.
func (s *OrderStatusStream) Close() { s.cancel() }

// GetOrderStatus opens the order-status stream of one order: the stored state first, if any, then each change
// as any source sees it (see the .proto). It has no default deadline: the service ends the stream after a
// terminal status or after max_wait. The stream is one call; it is not reopened when it breaks (FollowOrder
// does that). When req.ProjectId is 0, the client's project is used.
func (c *Client) GetOrderStatus(
	ctx context.Context, req *v1.GetOrderStatusRequest, opts ...grpc.CallOption,
) (*OrderStatusStream, error) {
	if c.fillsProject(req.GetProjectId()) {
		req = cloneOf(req)
		req.ProjectId = c.projectID
	}
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.stub.GetOrderStatus(ctx, req, opts...)
	if err != nil {
		cancel()
		return nil, translate(err)
	}
	return &OrderStatusStream{stream: stream, cancel: cancel}, nil
}

// StopFollowing is returned by a FollowOrder callback to stop following without an error: FollowOrder then
// returns nil.
var StopFollowing = errors.New("entitlements: stop following the order")

// FollowResult says how a FollowOrder call went.
type FollowResult struct {
	// Last is the last update delivered to the callback; nil when none was.
	Last *v1.OrderStatusUpdate
	// Opens is how many times GetOrderStatus was opened: 1 when the stream never broke.
	Opens int
}

// FollowOrder follows an order until it is done, calling fn with each new update in order, and opens the
// stream again when it breaks.
//
// When the stream fails with codes.Unavailable (the replica shut down, the connection dropped, the service
// restarted), or codes.Canceled that ctx did not cause (a stopping server cancels calls that reach it), FollowOrder
// waits a backoff (the client's RetryPolicy: InitialBackoff, times BackoffMultiplier per
// reopening, up to MaxBackoff, with jitter; back to InitialBackoff once a stream delivers) and opens it again with
// max_wait reduced by the time already spent, so req.MaxWait bounds the whole follow (DefaultMaxWait when unset). A reopened stream starts with the stored state: fn never sees a
// status twice. It gets an update only when its status is after the last one delivered, or the status is the
// same and EntitlementsGranted turned true, or it is the final TimedOut message.
//
// FollowOrder returns nil when the stream ends after a terminal status or the TimedOut message, or when fn
// returns StopFollowing. It returns fn's other errors as they are, ctx's end as an *Error with codes.Canceled
// or codes.DeadlineExceeded, any other stream error at once, and the last Unavailable (or Canceled) error when
// max_wait passes while reopening. The result is valid on error too.
func (c *Client) FollowOrder(
	ctx context.Context, req *v1.GetOrderStatusRequest, fn func(*v1.OrderStatusUpdate) error, opts ...grpc.CallOption,
) (FollowResult, error) {
	var result FollowResult
	overall := DefaultMaxWait
	if req.GetMaxWait() != nil {
		overall = req.GetMaxWait().AsDuration()
	}
	deadline := time.Now().Add(overall)
	backoff := c.retry.InitialBackoff
	attempt := req
	for {
		result.Opens++
		received, err := c.followOnce(ctx, attempt, &result, fn, opts)
		var callbackErr *callbackError
		switch {
		case err == nil:
			return result, nil
		case errors.As(err, &callbackErr):
			if errors.Is(callbackErr.err, StopFollowing) {
				return result, nil
			}
			return result, callbackErr.err
		case !reopenable(ctx, err):
			return result, err
		}
		if received {
			backoff = c.retry.InitialBackoff // the stream worked: the next break starts a new series
		}
		wait := jittered(backoff)
		if time.Until(deadline) <= wait {
			return result, err
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return result, translate(ctx.Err())
		case <-timer.C:
		}
		backoff = min(time.Duration(float64(backoff)*c.retry.multiplier()), c.retry.MaxBackoff)
		left := time.Until(deadline)
		if left <= 0 { // the wait overran: the service would refuse a max_wait of 0
			return result, err
		}
		attempt = cloneOf(req)
		attempt.MaxWait = durationpb.New(left)
	}
}

// callbackError marks an error returned by FollowOrder's callback, which ends the follow whatever it is.
type callbackError struct{ err error }

func (e *callbackError) Error() string { return e.err.Error() }

// followOnce opens the stream once and delivers its new updates; received says whether it got any message.
// It returns nil when the stream ended OK.
func (c *Client) followOnce(
	ctx context.Context, req *v1.GetOrderStatusRequest, result *FollowResult,
	fn func(*v1.OrderStatusUpdate) error, opts []grpc.CallOption,
) (received bool, err error) {
	stream, err := c.GetOrderStatus(ctx, req, opts...)
	if err != nil {
		return false, err
	}
	defer stream.Close()
	for {
		update, err := stream.Recv()
		if err == io.EOF {
			return received, nil
		}
		if err != nil {
			return received, err
		}
		received = true
		if !isNew(update, result.Last) {
			continue
		}
		result.Last = update
		if err := fn(update); err != nil {
			return received, &callbackError{err: err}
		}
	}
}

// isNew reports whether update tells something last did not: statuses only move forward, so a reopened
// stream's first message (the stored state) is usually a repeat.
func isNew(update, last *v1.OrderStatusUpdate) bool {
	switch {
	case update.GetTimedOut():
		return true
	case last == nil:
		return true
	case update.GetStatus() > last.GetStatus():
		return true
	case update.GetStatus() == last.GetStatus():
		return update.GetEntitlementsGranted() && !last.GetEntitlementsGranted()
	}
	return false
}

// codeOf returns the code of an *Error, codes.Unknown for anything else.
func codeOf(err error) codes.Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return codes.Unknown
}

// jittered returns a random wait in [d/2, d].
func jittered(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// reopenable tells whether a failed stream is worth opening again: UNAVAILABLE (the replica shut down, the
// connection dropped), or CANCELLED that the caller did not cause (a server that is stopping cancels the calls
// that reach it in the meantime).
func reopenable(ctx context.Context, err error) bool {
	switch codeOf(err) {
	case codes.Unavailable:
		return true
	case codes.Canceled:
		return ctx.Err() == nil
	}
	return false
}
