package entitlements_test

import (
	"context"
	"errors"
	"regexp"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	entitlements "github.com/xsolla-entitlements/entitlements/clients/go"
	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestAPIKeySentAsBearer: every call carries the key as `authorization: Bearer <key>`, and none without one.
func TestAPIKeySentAsBearer(t *testing.T) {
	f := &fakeService{}
	addr := serve(t, f)
	ctx := context.Background()
	if _, err := newClient(t, addr, entitlements.WithAPIKey("k-123")).CheckEntitlement(ctx,
		&v1.CheckEntitlementRequest{UserId: "u", Sku: "s"}); err != nil {
		t.Fatal(err)
	}
	if _, err := newClient(t, addr).CheckEntitlement(ctx, &v1.CheckEntitlementRequest{UserId: "u"}); err != nil {
		t.Fatal(err)
	}
	got := f.authHeaders()
	if len(got) != 2 || got[0] != "Bearer k-123" || got[1] != "" {
		t.Fatalf("authorization headers = %q, want [\"Bearer k-123\" \"\"]", got)
	}
}

// TestDefaultDeadline: a unary call whose context has no deadline gets the client's; one with its own keeps it.
func TestDefaultDeadline(t *testing.T) {
	var deadlines []time.Duration
	f := &fakeService{check: func(ctx context.Context, _ *v1.CheckEntitlementRequest) (*v1.CheckEntitlementResponse, error) {
		d, ok := ctx.Deadline()
		if !ok {
			deadlines = append(deadlines, 0)
		} else {
			deadlines = append(deadlines, time.Until(d))
		}
		return &v1.CheckEntitlementResponse{Active: true}, nil
	}}
	addr := serve(t, f)
	client := newClient(t, addr) // default: 5 s
	if _, err := client.CheckEntitlement(context.Background(), &v1.CheckEntitlementRequest{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := client.CheckEntitlement(ctx, &v1.CheckEntitlementRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := newClient(t, addr, entitlements.WithTimeout(0)).CheckEntitlement(context.Background(),
		&v1.CheckEntitlementRequest{}); err != nil {
		t.Fatal(err)
	}
	if deadlines[0] <= 4*time.Second || deadlines[0] > 5*time.Second {
		t.Errorf("default deadline = %v, want about 5s", deadlines[0])
	}
	if deadlines[1] <= 50*time.Second {
		t.Errorf("deadline of a context with its own = %v, want about 1m", deadlines[1])
	}
	if deadlines[2] != 0 {
		t.Errorf("WithTimeout(0): deadline = %v, want none", deadlines[2])
	}
}

// TestDefaultDeadlineExpires: a call slower than the default deadline fails DEADLINE_EXCEEDED, retryable, and
// matches context.DeadlineExceeded.
func TestDefaultDeadlineExpires(t *testing.T) {
	f := &fakeService{check: func(ctx context.Context, _ *v1.CheckEntitlementRequest) (*v1.CheckEntitlementResponse, error) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(3 * time.Second): // no deadline came: answer, and the test fails below
			return &v1.CheckEntitlementResponse{}, nil
		}
	}}
	client := newClient(t, serve(t, f), entitlements.WithTimeout(100*time.Millisecond))
	start := time.Now()
	_, err := client.CheckEntitlement(context.Background(), &v1.CheckEntitlementRequest{})
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("call took %v, want about 100ms", elapsed)
	}
	var e *entitlements.Error
	if !errors.As(err, &e) || e.Code != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want an *Error with DeadlineExceeded", err)
	}
	if !entitlements.IsRetryable(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v: want retryable and errors.Is context.DeadlineExceeded", err)
	}
}

// TestRetryResendsSameIdempotencyKey: UNAVAILABLE is retried and every attempt carries the same key, the
// caller's or the one the client made.
func TestRetryResendsSameIdempotencyKey(t *testing.T) {
	var attempts atomic.Int32
	f := &fakeService{grant: func(_ context.Context, req *v1.GrantRequest) (*v1.GrantResponse, error) {
		if attempts.Add(1)%3 != 0 { // two failures, then success
			return nil, status.Error(codes.Unavailable, "store unreachable")
		}
		return &v1.GrantResponse{Entitlement: &v1.Entitlement{Sku: req.GetSku(), Quantity: 5}}, nil
	}}
	client := newClient(t, serve(t, f))
	ctx := context.Background()

	for _, given := range []string{"order-42:gold", ""} {
		before := len(f.calls())
		req := &v1.GrantRequest{UserId: "p1", Sku: "gold", Quantity: proto.Int64(5), IdempotencyKey: given}
		resp, err := client.Grant(ctx, req)
		if err != nil {
			t.Fatalf("key %q: %v", given, err)
		}
		if resp.GetEntitlement().GetQuantity() != 5 {
			t.Fatalf("key %q: response %v", given, resp)
		}
		calls := f.calls()[before:]
		if len(calls) != 3 {
			t.Fatalf("key %q: %d attempts, want 3", given, len(calls))
		}
		first := calls[0].(*v1.GrantRequest).GetIdempotencyKey()
		for i, c := range calls {
			if got := c.(*v1.GrantRequest).GetIdempotencyKey(); got != first {
				t.Fatalf("key %q: attempt %d sent key %q, the first sent %q", given, i+1, got, first)
			}
		}
		if given != "" && first != given {
			t.Fatalf("sent key %q, want the caller's %q", first, given)
		}
		if given == "" && !uuidV4.MatchString(first) {
			t.Fatalf("generated key %q is not a UUID v4", first)
		}
		if req.GetIdempotencyKey() != given {
			t.Fatalf("the caller's request was modified: key %q", req.GetIdempotencyKey())
		}
	}
}

// TestGeneratedKeysDifferPerCall: each call without a key gets a new one, for Revoke as for Grant.
func TestGeneratedKeysDifferPerCall(t *testing.T) {
	f := &fakeService{}
	client := newClient(t, serve(t, f))
	ctx := context.Background()
	for range 2 {
		if _, err := client.Grant(ctx, &v1.GrantRequest{UserId: "u", Sku: "s"}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Revoke(ctx, &v1.RevokeRequest{UserId: "u", Sku: "s"}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for _, c := range f.calls() {
		key := c.(interface{ GetIdempotencyKey() string }).GetIdempotencyKey()
		if !uuidV4.MatchString(key) || seen[key] {
			t.Fatalf("key %q: want a fresh UUID v4 per call", key)
		}
		seen[key] = true
	}
}

// TestRetryGivesUpAfterMaxAttempts: the attempts are bounded by the policy and the error keeps the server's
// message; MaxAttempts 1 means one attempt.
func TestRetryGivesUpAfterMaxAttempts(t *testing.T) {
	f := &fakeService{grant: func(context.Context, *v1.GrantRequest) (*v1.GrantResponse, error) {
		return nil, status.Error(codes.Unavailable, "store unreachable")
	}}
	addr := serve(t, f)
	_, err := newClient(t, addr).Grant(context.Background(), &v1.GrantRequest{UserId: "u", Sku: "s"})
	var e *entitlements.Error
	if !errors.As(err, &e) || e.Code != codes.Unavailable || e.Message != "store unreachable" {
		t.Fatalf("err = %#v, want Unavailable with the server's message", err)
	}
	if n := len(f.calls()); n != 5 {
		t.Fatalf("%d attempts, want the default 5", n)
	}
	noRetry := entitlements.DefaultRetryPolicy()
	noRetry.MaxAttempts = 1
	_, err = newClient(t, addr, entitlements.WithRetry(noRetry)).Grant(context.Background(), &v1.GrantRequest{})
	if !entitlements.IsRetryable(err) {
		t.Fatalf("err = %v, want retryable", err)
	}
	if n := len(f.calls()); n != 6 {
		t.Fatalf("%d attempts with MaxAttempts 1, want 1", n-5)
	}
}

// TestOtherCodesNotRetried: a code outside the policy fails at the first attempt.
func TestOtherCodesNotRetried(t *testing.T) {
	f := &fakeService{grant: func(context.Context, *v1.GrantRequest) (*v1.GrantResponse, error) {
		return nil, status.Error(codes.AlreadyExists, "idempotency_key: already used for another request")
	}}
	_, err := newClient(t, serve(t, f)).Grant(context.Background(), &v1.GrantRequest{IdempotencyKey: "k"})
	if !entitlements.IsConflict(err) || len(f.calls()) != 1 {
		t.Fatalf("err = %v after %d attempts, want a conflict after 1", err, len(f.calls()))
	}
}

// TestProjectFilledIn: a request's project 0 becomes the client's project; a request's own project is kept.
func TestProjectFilledIn(t *testing.T) {
	f := &fakeService{}
	client := newClient(t, serve(t, f), entitlements.WithProjectID(308077))
	ctx := context.Background()
	req := &v1.CheckEntitlementRequest{UserId: "u", Sku: "s"}
	if _, err := client.CheckEntitlement(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CheckEntitlement(ctx, &v1.CheckEntitlementRequest{ProjectId: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Grant(ctx, &v1.GrantRequest{IdempotencyKey: "k"}); err != nil {
		t.Fatal(err)
	}
	calls := f.calls()
	got := []int64{
		calls[0].(*v1.CheckEntitlementRequest).GetProjectId(),
		calls[1].(*v1.CheckEntitlementRequest).GetProjectId(),
		calls[2].(*v1.GrantRequest).GetProjectId(),
	}
	if got[0] != 308077 || got[1] != 9 || got[2] != 308077 {
		t.Fatalf("projects sent = %v, want [308077 9 308077]", got)
	}
	if req.GetProjectId() != 0 {
		t.Fatal("the caller's request was modified")
	}
}

// TestNilRequest: a nil request is sent as an empty one (the service then names the missing field).
func TestNilRequest(t *testing.T) {
	f := &fakeService{check: func(_ context.Context, req *v1.CheckEntitlementRequest) (*v1.CheckEntitlementResponse, error) {
		if req.GetUserId() == "" {
			return nil, status.Error(codes.InvalidArgument, "user_id: required")
		}
		return &v1.CheckEntitlementResponse{}, nil
	}}
	client := newClient(t, serve(t, f), entitlements.WithProjectID(1))
	_, err := client.CheckEntitlement(context.Background(), nil)
	if !entitlements.IsInvalidArgument(err) {
		t.Fatalf("err = %v, want InvalidArgument", err)
	}
	if _, err := client.Grant(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	noProject := newClient(t, serve(t, f))
	if _, err := noProject.CheckEntitlement(context.Background(), nil); !entitlements.IsInvalidArgument(err) {
		t.Fatalf("without a project: err = %v, want InvalidArgument", err)
	}
}

// TestErrorMapping: each status code becomes an *Error with the server's message, the right predicate, and a
// status that status.FromError reads back.
func TestErrorMapping(t *testing.T) {
	cases := []struct {
		code  codes.Code
		name  string
		check func(error) bool
	}{
		{codes.InvalidArgument, "INVALID_ARGUMENT", entitlements.IsInvalidArgument},
		{codes.Unauthenticated, "UNAUTHENTICATED", entitlements.IsUnauthenticated},
		{codes.PermissionDenied, "PERMISSION_DENIED", entitlements.IsPermissionDenied},
		{codes.NotFound, "NOT_FOUND", entitlements.IsNotFound},
		{codes.AlreadyExists, "ALREADY_EXISTS", entitlements.IsConflict},
		{codes.FailedPrecondition, "FAILED_PRECONDITION", entitlements.IsConflict},
		{codes.ResourceExhausted, "RESOURCE_EXHAUSTED", entitlements.IsRetryable},
		{codes.Internal, "INTERNAL", func(err error) bool { return !entitlements.IsRetryable(err) }},
	}
	predicates := []func(error) bool{
		entitlements.IsInvalidArgument, entitlements.IsUnauthenticated, entitlements.IsPermissionDenied,
		entitlements.IsNotFound, entitlements.IsConflict, entitlements.IsRetryable,
	}
	var next atomic.Int32
	f := &fakeService{check: func(context.Context, *v1.CheckEntitlementRequest) (*v1.CheckEntitlementResponse, error) {
		c := cases[next.Load()]
		return nil, status.Error(c.code, "message for "+c.name)
	}}
	client := newClient(t, serve(t, f))
	for i, c := range cases {
		next.Store(int32(i))
		_, err := client.CheckEntitlement(context.Background(), &v1.CheckEntitlementRequest{})
		var e *entitlements.Error
		if !errors.As(err, &e) {
			t.Fatalf("%s: err %T is not an *entitlements.Error", c.name, err)
		}
		if e.Code != c.code || e.Message != "message for "+c.name || e.CodeName() != c.name {
			t.Errorf("%s: got code %v (%s), message %q", c.name, e.Code, e.CodeName(), e.Message)
		}
		if !c.check(err) {
			t.Errorf("%s: its predicate is false", c.name)
		}
		matched := 0
		for _, p := range predicates {
			if p(err) {
				matched++
			}
		}
		if want := map[bool]int{true: 0, false: 1}[c.code == codes.Internal]; matched != want {
			t.Errorf("%s: %d predicates true, want %d", c.name, matched, want)
		}
		if st, ok := status.FromError(err); !ok || st.Code() != c.code || st.Message() != e.Message {
			t.Errorf("%s: status.FromError = %v, %v", c.name, st, ok)
		}
		if errors.Unwrap(err) == nil {
			t.Errorf("%s: the gRPC error is not kept for errors.Unwrap", c.name)
		}
	}
}

// TestCanceledCall: a call whose context is canceled fails with Canceled and matches context.Canceled.
func TestCanceledCall(t *testing.T) {
	client := newClient(t, serve(t, &fakeService{}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := client.CheckEntitlement(ctx, &v1.CheckEntitlementRequest{})
	if status.Code(err) != codes.Canceled || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want Canceled matching context.Canceled", err)
	}
}

// TestUnreachableTarget: New succeeds without a service; the call then fails UNAVAILABLE.
func TestUnreachableTarget(t *testing.T) {
	client := newClient(t, "127.0.0.1:1")
	_, err := client.CheckEntitlement(context.Background(), &v1.CheckEntitlementRequest{})
	if status.Code(err) != codes.Unavailable || !entitlements.IsRetryable(err) {
		t.Fatalf("err = %v, want Unavailable", err)
	}
}

// TestInvalidOptions: New refuses options it cannot honour instead of failing later.
func TestInvalidOptions(t *testing.T) {
	bad := map[string]entitlements.Option{
		"six attempts":     entitlements.WithRetry(entitlements.RetryPolicy{MaxAttempts: 6, InitialBackoff: 1, MaxBackoff: 1}),
		"zero backoff":     entitlements.WithRetry(entitlements.RetryPolicy{MaxAttempts: 2, MaxBackoff: 1}),
		"no codes":         entitlements.WithRetry(entitlements.RetryPolicy{MaxAttempts: 2, InitialBackoff: 1, MaxBackoff: 1}),
		"negative time":    entitlements.WithTimeout(-time.Second),
		"negative id":      entitlements.WithProjectID(-1),
		"missing CA":       entitlements.WithTLSFiles("/nonexistent/ca.pem", "", "", ""),
		"cert without key": entitlements.WithTLSFiles("", "/nonexistent/cert.pem", "", ""),
		"key with newline": entitlements.WithAPIKey("k\r\nx-evil: 1"),
	}
	for name, opt := range bad {
		if client, err := entitlements.New("127.0.0.1:1", opt); err == nil {
			_ = client.Close()
			t.Errorf("%s: New succeeded", name)
		}
	}
	if _, err := entitlements.New(""); err == nil {
		t.Error("empty target: New succeeded")
	}
}
