package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	entitlements "github.com/xsolla-entitlements/entitlements/clients/go"
	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// service answers Grant with what it received, lists no entitlements and streams two updates; "missing"
// orders are NOT_FOUND.
type service struct {
	v1.UnimplementedEntitlementServiceServer
	grants []*v1.GrantRequest
}

func (s *service) Grant(_ context.Context, req *v1.GrantRequest) (*v1.GrantResponse, error) {
	s.grants = append(s.grants, req)
	if req.GetSku() == "bad" {
		return nil, status.Error(codes.InvalidArgument, "sku: not allowed")
	}
	return &v1.GrantResponse{
		Entitlement: &v1.Entitlement{UserId: req.GetUserId(), Sku: req.GetSku(), Quantity: req.GetQuantity(),
			Kind: req.GetKind()},
		ProjectId: req.GetProjectId(),
	}, nil
}

func (s *service) ListEntitlements(
	context.Context, *v1.ListEntitlementsRequest,
) (*v1.ListEntitlementsResponse, error) {
	return &v1.ListEntitlementsResponse{}, nil
}

func (s *service) GetOrderStatus(
	req *v1.GetOrderStatusRequest, stream grpc.ServerStreamingServer[v1.OrderStatusUpdate],
) error {
	if req.GetOrderId() == "missing" {
		return status.Error(codes.NotFound, "order missing not found")
	}
	for _, st := range []v1.OrderStatus{v1.OrderStatus_ORDER_STATUS_PAID, v1.OrderStatus_ORDER_STATUS_DONE} {
		if err := stream.Send(&v1.OrderStatusUpdate{OrderId: req.GetOrderId(), Status: st}); err != nil {
			return err
		}
	}
	return nil
}

// run feeds lines to a runner connected to a fresh service and returns the lines it wrote, decoded.
func run(t *testing.T, svc *service, lines ...string) []map[string]any {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	v1.RegisterEntitlementServiceServer(server, svc)
	go func() { _ = server.Serve(lis) }()
	defer server.Stop()

	var out bytes.Buffer
	r := &runner{out: bufio.NewWriter(&out), clients: map[string]*entitlements.Client{}}
	defer r.closeAll()
	connect := fmt.Sprintf(`{"id":0,"op":"connect","args":{"name":"c","target":%q,"api_key":"k","project_id":"12"}}`,
		lis.Addr().String())
	for _, line := range append([]string{connect}, lines...) {
		if !r.handle([]byte(line)) {
			break
		}
	}
	var answers []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", line, err)
		}
		answers = append(answers, m)
	}
	return answers
}

// TestRunnerMapsValues: proto3 JSON args (int64 as strings, enums by name) reach the request, the result is
// printed in the proto3 JSON mapping, and an absent idempotency key is left to the client to make.
func TestRunnerMapsValues(t *testing.T) {
	svc := &service{}
	answers := run(t, svc,
		`{"id":1,"op":"grant","client":"c","args":{"user_id":"p","sku":"gold","quantity":"500","kind":"ENTITLEMENT_KIND_CONSUMABLE"}}`)
	got, _ := json.Marshal(answers[1])
	want := `{"id":1,"ok":true,"result":{"entitlement":{"kind":"ENTITLEMENT_KIND_CONSUMABLE","quantity":"500","sku":"gold","userId":"p"},"projectId":"12"}}`
	if string(got) != want {
		t.Fatalf("answer %s\nwant   %s", got, want)
	}
	if len(svc.grants) != 1 || svc.grants[0].GetIdempotencyKey() == "" || svc.grants[0].GetProjectId() != 12 {
		t.Fatalf("request sent: %v", svc.grants)
	}
}

// TestRunnerErrors: the service's errors carry the canonical code name and message; requests the runner
// cannot carry out are RUNNER errors; it keeps going after each.
func TestRunnerErrors(t *testing.T) {
	answers := run(t, &service{},
		`{"id":1,"op":"grant","client":"c","args":{"user_id":"p","sku":"bad"}}`,
		`{"id":2,"op":"grant","client":"nope","args":{}}`,
		`{"id":3,"op":"grant","client":"c","args":{"no_such_field":1}}`,
		`not json`,
		`{"id":4,"op":"dance","client":"c"}`,
		`{"id":5,"op":"close","client":"c"}`,
		`{"op":"exit"}`,
		`{"id":6,"op":"grant","client":"c","args":{}}`,
	)
	codesSeen := []string{}
	for _, a := range answers[1:] {
		e, _ := a["error"].(map[string]any)
		codesSeen = append(codesSeen, fmt.Sprint(e["code"]))
	}
	if got := strings.Join(codesSeen, " "); got != "INVALID_ARGUMENT RUNNER RUNNER RUNNER RUNNER <nil>" {
		t.Fatalf("codes %q", got)
	}
	if e := answers[1]["error"].(map[string]any); e["message"] != "sku: not allowed" || e["type"] != "*entitlements.Error" {
		t.Fatalf("error %v", e)
	}
}

// TestRunnerStreams: follow_order writes one event per update, then the updates and the number of opens;
// get_order_status ends with its error after the events.
func TestRunnerStreams(t *testing.T) {
	answers := run(t, &service{},
		`{"id":1,"op":"follow_order","client":"c","args":{"order_id":"o1","user_id":"p","max_wait":"60s"}}`,
		`{"id":2,"op":"get_order_status","client":"c","args":{"order_id":"missing","user_id":"p"}}`,
	)
	lines, _ := json.Marshal(answers[1:])
	want := `[{"event":{"orderId":"o1","status":"ORDER_STATUS_PAID"},"id":1},` +
		`{"event":{"orderId":"o1","status":"ORDER_STATUS_DONE"},"id":1},` +
		`{"id":1,"ok":true,"result":{"opens":1,"updates":[{"orderId":"o1","status":"ORDER_STATUS_PAID"},{"orderId":"o1","status":"ORDER_STATUS_DONE"}]}},` +
		`{"error":{"code":"NOT_FOUND","message":"order missing not found","type":"*entitlements.Error"},"id":2,"ok":false}]`
	if string(lines) != want {
		t.Fatalf("lines %s\nwant  %s", lines, want)
	}
}

// TestRunnerListAllEmpty: list_all_entitlements always has the entitlements key, [] for a player with none.
func TestRunnerListAllEmpty(t *testing.T) {
	answers := run(t, &service{}, `{"id":1,"op":"list_all_entitlements","client":"c","args":{"user_id":"p"}}`)
	got, _ := json.Marshal(answers[1])
	if want := `{"id":1,"ok":true,"result":{"entitlements":[]}}`; string(got) != want {
		t.Fatalf("answer %s, want %s", got, want)
	}
}
