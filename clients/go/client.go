package entitlements

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// Client calls the entitlement service. It is safe for concurrent use: share one per process, all calls
// multiplex on one HTTP/2 connection. Close it when done.
type Client struct {
	conn      *grpc.ClientConn
	stub      v1.EntitlementServiceClient
	projectID int64
	timeout   time.Duration
	retry     RetryPolicy
}

// New returns a client of the service at target: "host:port", or any grpc-go target ("dns:///host:port",
// "unix:///path"). It does not connect: the connection is made by the first call, and made again after it
// breaks, so New succeeds while the service is down. It fails only on invalid options (an unreadable
// certificate file, a retry policy out of range).
//
// Without options the client uses TLS with the system's roots, no API key, a 5 s default deadline and
// DefaultRetryPolicy.
func New(target string, opts ...Option) (*Client, error) {
	if target == "" {
		return nil, errors.New("entitlements: empty target")
	}
	s := defaultSettings()
	for _, opt := range opts {
		if err := opt(&s); err != nil {
			return nil, err
		}
	}
	conn, err := grpc.NewClient(target, s.dialOptionList()...)
	if err != nil {
		return nil, err
	}
	return &Client{
		conn:      conn,
		stub:      v1.NewEntitlementServiceClient(conn),
		projectID: s.projectID,
		timeout:   s.timeout,
		retry:     s.retry,
	}, nil
}

// Close closes the connection; calls still running fail with codes.Canceled.
func (c *Client) Close() error { return c.conn.Close() }

// Conn returns the underlying gRPC connection, e.g. for a health check client on the same connection.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Grant grants an item to a player (see the GrantRequest fields in the .proto for quantities, durations and
// kinds). req is not modified.
//
// When req.IdempotencyKey is empty, the client makes one (a random UUID) for this call: it protects the
// call's own retries, but calling Grant again after an error makes a new key and may grant twice. For
// anything you may retry yourself (a purchase, a reward), pass a key derived from your data, such as
// "order-<order id>:<sku>": replaying it returns the first response with Replayed set.
// When req.ProjectId is 0, the client's project (WithProjectID) is used.
func (c *Client) Grant(ctx context.Context, req *v1.GrantRequest, opts ...grpc.CallOption) (*v1.GrantResponse, error) {
	if req.GetIdempotencyKey() == "" || c.fillsProject(req.GetProjectId()) {
		req = cloneOf(req)
		if req.IdempotencyKey == "" {
			req.IdempotencyKey = newIdempotencyKey()
		}
		req.ProjectId = c.project(req.ProjectId)
	}
	return unary(ctx, c, func(ctx context.Context) (*v1.GrantResponse, error) {
		return c.stub.Grant(ctx, req, opts...)
	})
}

// Revoke removes an item from a player completely; Revoked is false when there was nothing to remove. The
// idempotency key and the project are filled in as for Grant. req is not modified.
func (c *Client) Revoke(ctx context.Context, req *v1.RevokeRequest, opts ...grpc.CallOption) (*v1.RevokeResponse, error) {
	if req.GetIdempotencyKey() == "" || c.fillsProject(req.GetProjectId()) {
		req = cloneOf(req)
		if req.IdempotencyKey == "" {
			req.IdempotencyKey = newIdempotencyKey()
		}
		req.ProjectId = c.project(req.ProjectId)
	}
	return unary(ctx, c, func(ctx context.Context) (*v1.RevokeResponse, error) {
		return c.stub.Revoke(ctx, req, opts...)
	})
}

// CheckEntitlement tells whether a player holds an item now (Active), with the stored entitlement when there
// is one (also an expired one).
func (c *Client) CheckEntitlement(
	ctx context.Context, req *v1.CheckEntitlementRequest, opts ...grpc.CallOption,
) (*v1.CheckEntitlementResponse, error) {
	if c.fillsProject(req.GetProjectId()) {
		req = cloneOf(req)
		req.ProjectId = c.projectID
	}
	return unary(ctx, c, func(ctx context.Context) (*v1.CheckEntitlementResponse, error) {
		return c.stub.CheckEntitlement(ctx, req, opts...)
	})
}

// CheckEntitlements checks up to 1,000 (player, sku) pairs in one call: Results[i] answers Checks[i] as
// CheckEntitlement would. One bad pair fails the whole call with codes.InvalidArgument naming it
// ("checks[1].sku: ..."); no pair, or more than 1,000, names "checks". A read: retried on UNAVAILABLE like every
// call, within the default deadline. When req.ProjectId is 0, the client's project is used.
func (c *Client) CheckEntitlements(
	ctx context.Context, req *v1.CheckEntitlementsRequest, opts ...grpc.CallOption,
) (*v1.CheckEntitlementsResponse, error) {
	if c.fillsProject(req.GetProjectId()) {
		req = cloneOf(req)
		req.ProjectId = c.projectID
	}
	return unary(ctx, c, func(ctx context.Context) (*v1.CheckEntitlementsResponse, error) {
		return c.stub.CheckEntitlements(ctx, req, opts...)
	})
}

// ListEntitlements returns one page of a player's entitlements in sku order. A page may hold fewer than
// PageSize entitlements, even none, while NextPageToken is set: only an empty token means the end.
// AllEntitlements pages through them all.
func (c *Client) ListEntitlements(
	ctx context.Context, req *v1.ListEntitlementsRequest, opts ...grpc.CallOption,
) (*v1.ListEntitlementsResponse, error) {
	if c.fillsProject(req.GetProjectId()) {
		req = cloneOf(req)
		req.ProjectId = c.projectID
	}
	return unary(ctx, c, func(ctx context.Context) (*v1.ListEntitlementsResponse, error) {
		return c.stub.ListEntitlements(ctx, req, opts...)
	})
}

// ListSubscriptions returns a player's subscriptions in the shape of Xsolla's user subscriptions API:
// recurring ones first, then non-renewing ones, each group newest first. HasMore says whether more follow
// after Offset+Limit.
func (c *Client) ListSubscriptions(
	ctx context.Context, req *v1.ListSubscriptionsRequest, opts ...grpc.CallOption,
) (*v1.ListSubscriptionsResponse, error) {
	if c.fillsProject(req.GetProjectId()) {
		req = cloneOf(req)
		req.ProjectId = c.projectID
	}
	return unary(ctx, c, func(ctx context.Context) (*v1.ListSubscriptionsResponse, error) {
		return c.stub.ListSubscriptions(ctx, req, opts...)
	})
}

// ListLedger returns one page of a player's audit ledger, newest first. AllLedgerEntries pages through it.
func (c *Client) ListLedger(
	ctx context.Context, req *v1.ListLedgerRequest, opts ...grpc.CallOption,
) (*v1.ListLedgerResponse, error) {
	if c.fillsProject(req.GetProjectId()) {
		req = cloneOf(req)
		req.ProjectId = c.projectID
	}
	return unary(ctx, c, func(ctx context.Context) (*v1.ListLedgerResponse, error) {
		return c.stub.ListLedger(ctx, req, opts...)
	})
}

// unary makes one unary call with the client's default deadline (unless ctx has its own) and its errors.
func unary[Resp any](ctx context.Context, c *Client, call func(context.Context) (Resp, error)) (Resp, error) {
	ctx, cancel := c.unaryContext(ctx)
	defer cancel()
	resp, err := call(ctx)
	if err != nil {
		var none Resp
		return none, translate(err)
	}
	return resp, nil
}

// unaryContext gives ctx the client's default deadline when it has none of its own.
func (c *Client) unaryContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || c.timeout == 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

// fillsProject reports whether a request's project id of id is to be replaced by the client's.
func (c *Client) fillsProject(id int64) bool { return id == 0 && c.projectID != 0 }

func (c *Client) project(id int64) int64 {
	if id == 0 {
		return c.projectID
	}
	return id
}

// cloneOf returns a copy of m that the client may fill in without touching the caller's message; an empty
// message when m is nil.
func cloneOf[M proto.Message](m M) M {
	if !m.ProtoReflect().IsValid() {
		return m.ProtoReflect().Type().New().Interface().(M)
	}
	return proto.Clone(m).(M)
}

// newIdempotencyKey returns a random UUID (version 4) for a write whose caller gave no key. grpc-go resends
// the serialized request on retries, so every attempt of the call carries this same key.
func newIdempotencyKey() string { return uuid.NewString() }
