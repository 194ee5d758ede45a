package entitlements_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	entitlements "github.com/xsolla-entitlements/entitlements/clients/go"
	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

const (
	statusNew  = v1.OrderStatus_ORDER_STATUS_NEW
	statusPaid = v1.OrderStatus_ORDER_STATUS_PAID
	statusDone = v1.OrderStatus_ORDER_STATUS_DONE
)

func update(s v1.OrderStatus, granted bool) *v1.OrderStatusUpdate {
	return &v1.OrderStatusUpdate{OrderId: "o1", Status: s, EntitlementsGranted: granted}
}

// describe writes updates as "NEW PAID PAID+granted DONE+granted".
func describe(updates []*v1.OrderStatusUpdate) string {
	out := ""
	for i, u := range updates {
		if i > 0 {
			out += " "
		}
		out += u.GetStatus().String()[len("ORDER_STATUS_"):]
		if u.GetEntitlementsGranted() {
			out += "+granted"
		}
		if u.GetTimedOut() {
			out += "+timed_out"
		}
	}
	return out
}

// sendAll sends updates on stream, stopping at the first failure.
func sendAll(stream grpc.ServerStreamingServer[v1.OrderStatusUpdate], updates ...*v1.OrderStatusUpdate) error {
	for _, u := range updates {
		if err := stream.Send(u); err != nil {
			return err
		}
	}
	return nil
}

// TestFollowOrderReopensWithoutRepeats: a stream that breaks with UNAVAILABLE is opened again with the time
// left of max_wait, and the reopened stream's repeat of the stored state is not delivered.
func TestFollowOrderReopensWithoutRepeats(t *testing.T) {
	var opens atomic.Int32
	f := &fakeService{getOrderStatus: func(req *v1.GetOrderStatusRequest, stream grpc.ServerStreamingServer[v1.OrderStatusUpdate]) error {
		if opens.Add(1) == 1 {
			if err := sendAll(stream, update(statusNew, false), update(statusPaid, false)); err != nil {
				return err
			}
			return status.Error(codes.Unavailable, "replica shutting down")
		}
		return sendAll(stream, update(statusPaid, false), update(statusPaid, true), update(statusDone, true))
	}}
	client := newClient(t, serve(t, f), entitlements.WithProjectID(77))
	var got []*v1.OrderStatusUpdate
	req := &v1.GetOrderStatusRequest{OrderId: "o1", UserId: "p", Token: "tok", MaxWait: durationpb.New(time.Minute)}
	result, err := client.FollowOrder(context.Background(), req, func(u *v1.OrderStatusUpdate) error {
		got = append(got, u)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := describe(got); d != "NEW PAID PAID+granted DONE+granted" {
		t.Fatalf("delivered %q, want %q", d, "NEW PAID PAID+granted DONE+granted")
	}
	if result.Opens != 2 || describe([]*v1.OrderStatusUpdate{result.Last}) != "DONE+granted" {
		t.Fatalf("result = %+v, want 2 opens and the last update DONE+granted", result)
	}
	calls := f.calls()
	first, second := calls[0].(*v1.GetOrderStatusRequest), calls[1].(*v1.GetOrderStatusRequest)
	if first.GetMaxWait().AsDuration() != time.Minute || first.GetProjectId() != 77 {
		t.Fatalf("first open sent %v", first)
	}
	reopened := second.GetMaxWait().AsDuration()
	if reopened >= time.Minute || reopened < 50*time.Second {
		t.Fatalf("reopened with max_wait %v, want a little less than 1m", reopened)
	}
	if second.GetOrderId() != "o1" || second.GetUserId() != "p" || second.GetToken() != "tok" || second.GetProjectId() != 77 {
		t.Fatalf("reopened with %v", second)
	}
	if req.GetMaxWait().AsDuration() != time.Minute {
		t.Fatal("the caller's request was modified")
	}
}

// TestFollowOrderAcrossServerRestart: when the server goes away mid-stream (the connection drops), the helper
// reconnects to the server that replaces it and goes on from where it was.
func TestFollowOrderAcrossServerRestart(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	// Closed by the callback: the server is stopped only once the client has the first update (a message the
	// server sent but the client never read would make gRPC retry the call by itself, no reopening needed).
	delivered := make(chan struct{})
	first := &fakeService{getOrderStatus: func(_ *v1.GetOrderStatusRequest, stream grpc.ServerStreamingServer[v1.OrderStatusUpdate]) error {
		if err := sendAll(stream, update(statusNew, false)); err != nil {
			return err
		}
		<-stream.Context().Done() // until the server stops under it
		return stream.Context().Err()
	}}
	server := grpc.NewServer()
	v1.RegisterEntitlementServiceServer(server, first)
	go func() { _ = server.Serve(lis) }()

	second := &fakeService{getOrderStatus: func(_ *v1.GetOrderStatusRequest, stream grpc.ServerStreamingServer[v1.OrderStatusUpdate]) error {
		return sendAll(stream, update(statusNew, false), update(statusDone, true))
	}}
	var restart sync.WaitGroup
	restart.Add(1)
	go func() {
		defer restart.Done()
		<-delivered
		server.Stop() // closes the connection: the client's stream fails UNAVAILABLE
		for {         // the port is free again at once; retry briefly in case it is not
			lis2, err := net.Listen("tcp", addr)
			if err == nil {
				t.Cleanup(serveOn(lis2, second))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()

	client := newClient(t, addr)
	var got []*v1.OrderStatusUpdate
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	result, err := client.FollowOrder(ctx, &v1.GetOrderStatusRequest{OrderId: "o1", UserId: "p"},
		func(u *v1.OrderStatusUpdate) error {
			if got = append(got, u); len(got) == 1 {
				close(delivered)
			}
			return nil
		})
	restart.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if describe(got) != "NEW DONE+granted" || result.Opens < 2 {
		t.Fatalf("delivered %q in %d opens, want \"NEW DONE+granted\" in 2 or more", describe(got), result.Opens)
	}
}

func serveOn(lis net.Listener, f *fakeService) func() {
	server := grpc.NewServer()
	v1.RegisterEntitlementServiceServer(server, f)
	go func() { _ = server.Serve(lis) }()
	return server.Stop
}

// TestFollowOrderEndsOnOtherErrors: an error other than UNAVAILABLE ends the follow at once with that error.
func TestFollowOrderEndsOnOtherErrors(t *testing.T) {
	f := &fakeService{getOrderStatus: func(*v1.GetOrderStatusRequest, grpc.ServerStreamingServer[v1.OrderStatusUpdate]) error {
		return status.Error(codes.NotFound, "order o1 not found")
	}}
	client := newClient(t, serve(t, f))
	result, err := client.FollowOrder(context.Background(), &v1.GetOrderStatusRequest{OrderId: "o1"},
		func(*v1.OrderStatusUpdate) error { return nil })
	if !entitlements.IsNotFound(err) || result.Opens != 1 || len(f.calls()) != 1 {
		t.Fatalf("err = %v after %d opens (%d calls), want NotFound after 1", err, result.Opens, len(f.calls()))
	}
}

// TestFollowOrderReopensWhatTheServerCancelled: a stopping server cancels the calls that reach it; CANCELLED that
// the caller's context did not cause is reopened like UNAVAILABLE.
func TestFollowOrderReopensWhatTheServerCancelled(t *testing.T) {
	var opens atomic.Int32
	f := &fakeService{getOrderStatus: func(_ *v1.GetOrderStatusRequest, stream grpc.ServerStreamingServer[v1.OrderStatusUpdate]) error {
		if opens.Add(1) == 1 {
			if err := sendAll(stream, update(statusNew, false)); err != nil {
				return err
			}
			return status.Error(codes.Canceled, "server stopping")
		}
		return sendAll(stream, update(statusNew, false), update(statusDone, true))
	}}
	client := newClient(t, serve(t, f))
	var got []*v1.OrderStatusUpdate
	result, err := client.FollowOrder(context.Background(), &v1.GetOrderStatusRequest{OrderId: "o1"},
		func(u *v1.OrderStatusUpdate) error { got = append(got, u); return nil })
	if err != nil || result.Opens != 2 || describe(got) != "NEW DONE+granted" {
		t.Fatalf("err = %v, %d opens, delivered %q; want nil, 2, \"NEW DONE+granted\"", err, result.Opens, describe(got))
	}
}

// TestFollowOrderGivesUpAfterMaxWait: while the stream cannot be opened, reopening stops when max_wait has
// passed, with the last error.
func TestFollowOrderGivesUpAfterMaxWait(t *testing.T) {
	f := &fakeService{getOrderStatus: func(*v1.GetOrderStatusRequest, grpc.ServerStreamingServer[v1.OrderStatusUpdate]) error {
		return status.Error(codes.Unavailable, "store unreachable")
	}}
	client := newClient(t, serve(t, f))
	start := time.Now()
	result, err := client.FollowOrder(context.Background(),
		&v1.GetOrderStatusRequest{OrderId: "o1", MaxWait: durationpb.New(400 * time.Millisecond)},
		func(*v1.OrderStatusUpdate) error { return nil })
	elapsed := time.Since(start)
	if status.Code(err) != codes.Unavailable || result.Opens < 2 || result.Last != nil {
		t.Fatalf("err = %v after %d opens, want Unavailable after several", err, result.Opens)
	}
	if elapsed > 2*time.Second {
		t.Fatalf("gave up after %v, want about 400ms", elapsed)
	}
}

// TestFollowOrderTimedOut: the final timed_out message is delivered even though it repeats the status.
func TestFollowOrderTimedOut(t *testing.T) {
	f := &fakeService{getOrderStatus: func(_ *v1.GetOrderStatusRequest, stream grpc.ServerStreamingServer[v1.OrderStatusUpdate]) error {
		last := update(statusNew, false)
		last.TimedOut = true
		return sendAll(stream, update(statusNew, false), update(statusNew, false), last)
	}}
	client := newClient(t, serve(t, f))
	var got []*v1.OrderStatusUpdate
	if _, err := client.FollowOrder(context.Background(), &v1.GetOrderStatusRequest{OrderId: "o1"},
		func(u *v1.OrderStatusUpdate) error { got = append(got, u); return nil }); err != nil {
		t.Fatal(err)
	}
	if describe(got) != "NEW NEW+timed_out" {
		t.Fatalf("delivered %q", describe(got))
	}
}

// TestFollowOrderCallbackStops: StopFollowing ends the follow without an error; another error is returned as
// is; either way the stream is cancelled.
func TestFollowOrderCallbackStops(t *testing.T) {
	cancelled := make(chan struct{}, 2)
	f := &fakeService{getOrderStatus: func(_ *v1.GetOrderStatusRequest, stream grpc.ServerStreamingServer[v1.OrderStatusUpdate]) error {
		if err := sendAll(stream, update(statusNew, false)); err != nil {
			return err
		}
		<-stream.Context().Done()
		cancelled <- struct{}{}
		return stream.Context().Err()
	}}
	client := newClient(t, serve(t, f))
	req := &v1.GetOrderStatusRequest{OrderId: "o1"}
	_, err := client.FollowOrder(context.Background(), req, func(*v1.OrderStatusUpdate) error {
		return entitlements.StopFollowing
	})
	if err != nil {
		t.Fatalf("StopFollowing: err = %v", err)
	}
	mine := errors.New("game server shutting down")
	_, err = client.FollowOrder(context.Background(), req, func(*v1.OrderStatusUpdate) error { return mine })
	if err != mine {
		t.Fatalf("err = %v, want the callback's own", err)
	}
	for range 2 {
		select {
		case <-cancelled:
		case <-time.After(5 * time.Second):
			t.Fatal("the server's stream was not cancelled")
		}
	}
}

// TestFollowOrderContextCancelled: cancelling the context ends the follow with Canceled, also while waiting
// to reopen.
func TestFollowOrderContextCancelled(t *testing.T) {
	f := &fakeService{getOrderStatus: func(*v1.GetOrderStatusRequest, grpc.ServerStreamingServer[v1.OrderStatusUpdate]) error {
		return status.Error(codes.Unavailable, "store unreachable")
	}}
	client := newClient(t, serve(t, f))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := client.FollowOrder(ctx, &v1.GetOrderStatusRequest{OrderId: "o1"},
		func(*v1.OrderStatusUpdate) error { return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want one matching context.DeadlineExceeded", err)
	}
}

// TestGetOrderStatusRaw: the raw stream delivers every message, repeats included, then io.EOF; an error ends
// it as an *Error; it has no default deadline.
func TestGetOrderStatusRaw(t *testing.T) {
	var hadDeadline atomic.Bool
	f := &fakeService{getOrderStatus: func(req *v1.GetOrderStatusRequest, stream grpc.ServerStreamingServer[v1.OrderStatusUpdate]) error {
		_, ok := stream.Context().Deadline()
		hadDeadline.Store(ok)
		if req.GetOrderId() == "missing" {
			return status.Error(codes.NotFound, "order missing not found")
		}
		return sendAll(stream, update(statusPaid, false), update(statusPaid, true), update(statusDone, true))
	}}
	client := newClient(t, serve(t, f), entitlements.WithTimeout(time.Second))
	stream, err := client.GetOrderStatus(context.Background(), &v1.GetOrderStatusRequest{OrderId: "o1"})
	if err != nil {
		t.Fatal(err)
	}
	var got []*v1.OrderStatusUpdate
	for {
		u, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, u)
	}
	if describe(got) != "PAID PAID+granted DONE+granted" || hadDeadline.Load() {
		t.Fatalf("delivered %q (deadline: %v)", describe(got), hadDeadline.Load())
	}
	stream.Close()

	stream, err = client.GetOrderStatus(context.Background(), &v1.GetOrderStatusRequest{OrderId: "missing"})
	if err == nil {
		_, err = stream.Recv()
		stream.Close()
	}
	var e *entitlements.Error
	if !errors.As(err, &e) || e.Code != codes.NotFound || e.Message != "order missing not found" {
		t.Fatalf("err = %v, want NotFound", fmt.Sprint(err))
	}
}
