package entitlements_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	entitlements "github.com/xsolla-entitlements/entitlements/clients/go"
	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// fakeService is an in-process EntitlementService whose handlers each test sets. It records every call's
// request and metadata, so tests check what went over the wire, retries included.
type fakeService struct {
	v1.UnimplementedEntitlementServiceServer

	grant          func(context.Context, *v1.GrantRequest) (*v1.GrantResponse, error)
	revoke         func(context.Context, *v1.RevokeRequest) (*v1.RevokeResponse, error)
	check          func(context.Context, *v1.CheckEntitlementRequest) (*v1.CheckEntitlementResponse, error)
	list           func(context.Context, *v1.ListEntitlementsRequest) (*v1.ListEntitlementsResponse, error)
	ledger         func(context.Context, *v1.ListLedgerRequest) (*v1.ListLedgerResponse, error)
	getOrderStatus func(*v1.GetOrderStatusRequest, grpc.ServerStreamingServer[v1.OrderStatusUpdate]) error
	checkBatch     func(context.Context, *v1.CheckEntitlementsRequest) (*v1.CheckEntitlementsResponse, error)
	watch          func(grpc.BidiStreamingServer[v1.WatchEntitlementsRequest, v1.WatchEntitlementsResponse]) error

	mu       sync.Mutex
	requests []any
	auth     []string
}

func (f *fakeService) record(ctx context.Context, req any) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, req)
	f.auth = append(f.auth, strings.Join(md.Get("authorization"), ","))
}

// calls returns the requests received so far, in order.
func (f *fakeService) calls() []any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]any(nil), f.requests...)
}

func (f *fakeService) authHeaders() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.auth...)
}

func (f *fakeService) Grant(ctx context.Context, req *v1.GrantRequest) (*v1.GrantResponse, error) {
	f.record(ctx, req)
	if f.grant == nil {
		return &v1.GrantResponse{Entitlement: &v1.Entitlement{UserId: req.GetUserId(), Sku: req.GetSku()}}, nil
	}
	return f.grant(ctx, req)
}

func (f *fakeService) Revoke(ctx context.Context, req *v1.RevokeRequest) (*v1.RevokeResponse, error) {
	f.record(ctx, req)
	if f.revoke == nil {
		return &v1.RevokeResponse{}, nil
	}
	return f.revoke(ctx, req)
}

func (f *fakeService) CheckEntitlement(
	ctx context.Context, req *v1.CheckEntitlementRequest,
) (*v1.CheckEntitlementResponse, error) {
	f.record(ctx, req)
	if f.check == nil {
		return &v1.CheckEntitlementResponse{}, nil
	}
	return f.check(ctx, req)
}

func (f *fakeService) ListEntitlements(
	ctx context.Context, req *v1.ListEntitlementsRequest,
) (*v1.ListEntitlementsResponse, error) {
	f.record(ctx, req)
	return f.list(ctx, req)
}

func (f *fakeService) ListLedger(ctx context.Context, req *v1.ListLedgerRequest) (*v1.ListLedgerResponse, error) {
	f.record(ctx, req)
	return f.ledger(ctx, req)
}

func (f *fakeService) GetOrderStatus(
	req *v1.GetOrderStatusRequest, stream grpc.ServerStreamingServer[v1.OrderStatusUpdate],
) error {
	f.record(stream.Context(), req)
	return f.getOrderStatus(req, stream)
}

func (f *fakeService) CheckEntitlements(
	ctx context.Context, req *v1.CheckEntitlementsRequest,
) (*v1.CheckEntitlementsResponse, error) {
	f.record(ctx, req)
	return f.checkBatch(ctx, req)
}

func (f *fakeService) WatchEntitlements(
	stream grpc.BidiStreamingServer[v1.WatchEntitlementsRequest, v1.WatchEntitlementsResponse],
) error {
	f.record(stream.Context(), "watch")
	return f.watch(stream)
}

// serve starts f on a free loopback port and returns its address; the server stops when the test ends.
func serve(t testing.TB, f *fakeService, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer(opts...)
	v1.RegisterEntitlementServiceServer(server, f)
	go func() { _ = server.Serve(lis) }()
	t.Cleanup(server.Stop)
	return lis.Addr().String()
}

// newClient returns a plaintext client of addr with fast retries (so retry tests take milliseconds), closed
// when the test ends; opts come after and override.
func newClient(t *testing.T, addr string, opts ...entitlements.Option) *entitlements.Client {
	t.Helper()
	policy := entitlements.DefaultRetryPolicy()
	policy.InitialBackoff = 5 * time.Millisecond
	policy.MaxBackoff = 20 * time.Millisecond
	base := []entitlements.Option{entitlements.WithInsecure(), entitlements.WithRetry(policy)}
	client, err := entitlements.New(addr, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}
