package entitlements_test

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	entitlements "github.com/xsolla-entitlements/entitlements/clients/go"
	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// TestCheckEntitlements: the batch goes out as given with the client's project, UNAVAILABLE is retried (a
// read), the results come back in order, and a refusal is an *Error with the server's message.
func TestCheckEntitlements(t *testing.T) {
	var attempts atomic.Int32
	f := &fakeService{checkBatch: func(_ context.Context, req *v1.CheckEntitlementsRequest) (*v1.CheckEntitlementsResponse, error) {
		if attempts.Add(1) == 1 {
			return nil, status.Error(codes.Unavailable, "store unreachable")
		}
		for i, c := range req.GetChecks() {
			if c.GetSku() == "" {
				return nil, status.Errorf(codes.InvalidArgument, "checks[%d].sku: is required", i)
			}
		}
		resp := &v1.CheckEntitlementsResponse{}
		for _, c := range req.GetChecks() {
			resp.Results = append(resp.Results, &v1.CheckEntitlementResponse{Active: c.GetSku() == "gold"})
		}
		return resp, nil
	}}
	client := newClient(t, serve(t, f), entitlements.WithProjectID(9))
	req := &v1.CheckEntitlementsRequest{Checks: []*v1.CheckEntitlementsRequest_Check{
		{UserId: "a", Sku: "gold"}, {UserId: "b", Sku: "silver"}, {UserId: "a", Sku: "gold"},
	}}
	resp, err := client.CheckEntitlements(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var got []bool
	for _, r := range resp.GetResults() {
		got = append(got, r.GetActive())
	}
	if len(got) != 3 || !got[0] || got[1] || !got[2] {
		t.Fatalf("results %v", got)
	}
	calls := f.calls()
	if len(calls) != 2 || calls[1].(*v1.CheckEntitlementsRequest).GetProjectId() != 9 || req.GetProjectId() != 0 {
		t.Fatalf("calls %v (the caller's request must stay as given)", calls)
	}
	req.Checks[1].Sku = ""
	_, err = client.CheckEntitlements(context.Background(), req)
	var e *entitlements.Error
	if !errors.As(err, &e) || e.Code != codes.InvalidArgument || e.Message != "checks[1].sku: is required" {
		t.Fatalf("err = %v", err)
	}
}

// TestWatchEntitlementsRawStream: the first message carries the client's project, later messages add and remove
// players, Recv delivers what the service sends and ends with its status as an *Error.
func TestWatchEntitlementsRawStream(t *testing.T) {
	f := &fakeService{}
	ws := newWatchServer(f)
	client := newClient(t, serve(t, f), entitlements.WithProjectID(3))
	stream, err := client.WatchEntitlements(context.Background(), &v1.WatchEntitlementsRequest{
		AddUserIds: []string{"a"}, Snapshot: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	conn := ws.next(t)
	if conn.first.GetProjectId() != 3 || conn.first.GetAddUserIds()[0] != "a" || !conn.first.GetSnapshot() {
		t.Fatalf("first message %v", conn.first)
	}
	conn.push(snapshotOf("a", 2), heartbeatAt("c5"))
	if msg, err := stream.Recv(); err != nil || msg.GetSnapshot().GetVersion() != 2 {
		t.Fatalf("first: %v, %v", msg, err)
	}
	if msg, err := stream.Recv(); err != nil || msg.GetCursor() != "c5" || msg.GetHeartbeat() == nil {
		t.Fatalf("second: %v, %v", msg, err)
	}
	if err := stream.AddPlayers([]string{"b", "c"}, false); err != nil {
		t.Fatal(err)
	}
	if msg := conn.message(t); len(msg.GetAddUserIds()) != 2 || msg.GetSnapshot() {
		t.Fatalf("add sent %v", msg)
	}
	if err := stream.RemovePlayers([]string{"a"}); err != nil {
		t.Fatal(err)
	}
	if msg := conn.message(t); len(msg.GetRemoveUserIds()) != 1 {
		t.Fatalf("remove sent %v", msg)
	}
	conn.end <- status.Error(codes.OutOfRange, "cursor: older than the history kept")
	_, err = stream.Recv()
	var e *entitlements.Error
	if !errors.As(err, &e) || e.Code != codes.OutOfRange || e.Message != "cursor: older than the history kept" {
		t.Fatalf("end: %v", err)
	}
}

// TestWatchEntitlementsClose: Close cancels the call on the service's side, and Recv then fails CANCELLED.
func TestWatchEntitlementsClose(t *testing.T) {
	f := &fakeService{}
	ws := newWatchServer(f)
	client := newClient(t, serve(t, f))
	stream, err := client.WatchEntitlements(context.Background(), &v1.WatchEntitlementsRequest{AllPlayers: true})
	if err != nil {
		t.Fatal(err)
	}
	conn := ws.next(t)
	stream.Close()
	select {
	case <-conn.gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the service's stream outlived Close")
	}
	if _, err := stream.Recv(); err == io.EOF || !errors.Is(err, context.Canceled) {
		t.Fatalf("Recv after Close: %v", err)
	}
}
