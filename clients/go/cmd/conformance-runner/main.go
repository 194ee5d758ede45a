// Command conformance-runner drives the Go client for the conformance harness (conformance/PROTOCOL.md): it
// reads one JSON request per line on stdin, maps it onto the client's public API and writes one JSON line per
// answer (and per stream update) on stdout. It holds no scenario logic: the harness compares.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	entitlements "github.com/xsolla-entitlements/entitlements/clients/go"
	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

type request struct {
	ID     json.RawMessage `json:"id"`
	Op     string          `json:"op"`
	Client string          `json:"client"`
	Args   json.RawMessage `json:"args"`
}

type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Type    string `json:"type"`
}

// runnerError is a request the runner could not carry out (not the service's answer): code "RUNNER".
type runnerError struct{ msg string }

func (e *runnerError) Error() string { return e.msg }

func runnerErrorf(format string, args ...any) error {
	return &runnerError{msg: fmt.Sprintf(format, args...)}
}

type runner struct {
	out     *bufio.Writer
	clients map[string]*entitlements.Client
	caches  map[string]*entitlements.Cache
}

func main() {
	r := &runner{
		out:     bufio.NewWriter(os.Stdout),
		clients: map[string]*entitlements.Client{},
		caches:  map[string]*entitlements.Cache{},
	}
	defer r.closeAll()
	r.write(map[string]any{"ready": true, "client": "go"})
	in := bufio.NewReader(os.Stdin)
	for {
		line, err := in.ReadBytes('\n')
		if len(line) > 0 {
			if !r.handle(line) {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				fmt.Fprintln(os.Stderr, "conformance-runner: reading stdin:", err)
			}
			return
		}
	}
}

// handle answers one request line; false means exit.
func (r *runner) handle(line []byte) bool {
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		r.answer(json.RawMessage("null"), nil, runnerErrorf("cannot parse request: %v", err))
		return true
	}
	if len(req.ID) == 0 {
		req.ID = json.RawMessage("null")
	}
	if req.Op == "exit" {
		return false
	}
	result, err := r.do(&req)
	r.answer(req.ID, result, err)
	return true
}

func (r *runner) do(req *request) (any, error) {
	args := req.Args
	if len(args) == 0 || string(args) == "null" {
		args = json.RawMessage("{}")
	}
	if req.Op == "connect" {
		return r.connect(args)
	}
	client, ok := r.clients[req.Client]
	if !ok {
		return nil, runnerErrorf("no connection named %q", req.Client)
	}
	ctx := context.Background()
	switch req.Op {
	case "close":
		delete(r.clients, req.Client)
		return struct{}{}, client.Close()
	case "grant":
		return call(args, &v1.GrantRequest{}, func(m *v1.GrantRequest) (proto.Message, error) {
			return client.Grant(ctx, m)
		})
	case "revoke":
		return call(args, &v1.RevokeRequest{}, func(m *v1.RevokeRequest) (proto.Message, error) {
			return client.Revoke(ctx, m)
		})
	case "check":
		return call(args, &v1.CheckEntitlementRequest{}, func(m *v1.CheckEntitlementRequest) (proto.Message, error) {
			return client.CheckEntitlement(ctx, m)
		})
	case "check_entitlements":
		return call(args, &v1.CheckEntitlementsRequest{}, func(m *v1.CheckEntitlementsRequest) (proto.Message, error) {
			return client.CheckEntitlements(ctx, m)
		})
	case "cache_open", "cache_check", "cache_stats", "cache_close":
		return r.cacheOp(ctx, req.Op, client, args)
	case "list_entitlements":
		return call(args, &v1.ListEntitlementsRequest{}, func(m *v1.ListEntitlementsRequest) (proto.Message, error) {
			return client.ListEntitlements(ctx, m)
		})
	case "list_all_entitlements":
		req := &v1.ListEntitlementsRequest{}
		if err := protojson.Unmarshal(args, req); err != nil {
			return nil, runnerErrorf("args: %v", err)
		}
		all := []json.RawMessage{} // the key is always there, [] for none (PROTOCOL.md)
		for e, err := range client.AllEntitlements(ctx, req) {
			if err != nil {
				return nil, err
			}
			line, err := marshal(e)
			if err != nil {
				return nil, err
			}
			all = append(all, line)
		}
		return map[string]any{"entitlements": all}, nil
	case "list_subscriptions":
		return call(args, &v1.ListSubscriptionsRequest{}, func(m *v1.ListSubscriptionsRequest) (proto.Message, error) {
			return client.ListSubscriptions(ctx, m)
		})
	case "list_ledger":
		return call(args, &v1.ListLedgerRequest{}, func(m *v1.ListLedgerRequest) (proto.Message, error) {
			return client.ListLedger(ctx, m)
		})
	case "get_order_status":
		return r.getOrderStatus(ctx, req.ID, client, args)
	case "follow_order":
		return r.followOrder(ctx, req.ID, client, args)
	}
	return nil, runnerErrorf("unknown op %q", req.Op)
}

// call decodes args (proto3 JSON with the .proto's field names) into msg, runs fn and encodes its response.
func call[M proto.Message](args json.RawMessage, msg M, fn func(M) (proto.Message, error)) (any, error) {
	if err := protojson.Unmarshal(args, msg); err != nil {
		return nil, runnerErrorf("args: %v", err)
	}
	resp, err := fn(msg)
	if err != nil {
		return nil, err
	}
	return marshal(resp)
}

func (r *runner) getOrderStatus(
	ctx context.Context, id json.RawMessage, client *entitlements.Client, args json.RawMessage,
) (any, error) {
	req := &v1.GetOrderStatusRequest{}
	if err := protojson.Unmarshal(args, req); err != nil {
		return nil, runnerErrorf("args: %v", err)
	}
	stream, err := client.GetOrderStatus(ctx, req)
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	updates := []json.RawMessage{}
	for {
		update, err := stream.Recv()
		if err == io.EOF {
			return map[string]any{"updates": updates}, nil
		}
		if err != nil {
			return nil, err
		}
		event, err := marshal(update)
		if err != nil {
			return nil, err
		}
		r.write(map[string]any{"id": id, "event": event})
		updates = append(updates, event)
	}
}

func (r *runner) followOrder(
	ctx context.Context, id json.RawMessage, client *entitlements.Client, args json.RawMessage,
) (any, error) {
	req := &v1.GetOrderStatusRequest{}
	if err := protojson.Unmarshal(args, req); err != nil {
		return nil, runnerErrorf("args: %v", err)
	}
	updates := []json.RawMessage{}
	result, err := client.FollowOrder(ctx, req, func(update *v1.OrderStatusUpdate) error {
		event, err := marshal(update)
		if err != nil {
			return err
		}
		r.write(map[string]any{"id": id, "event": event})
		updates = append(updates, event)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"updates": updates, "opens": result.Opens}, nil
}

type connectArgs struct {
	Name        string       `json:"name"`
	Target      string       `json:"target"`
	HTTPBaseURL string       `json:"http_base_url"`
	APIKey      *string      `json:"api_key"`
	ProjectID   *json.Number `json:"project_id"`
	TimeoutMs   *json.Number `json:"timeout_ms"`
	TLS         *struct {
		CAFile     string `json:"ca_file"`
		CertFile   string `json:"cert_file"`
		KeyFile    string `json:"key_file"`
		ServerName string `json:"server_name"`
	} `json:"tls"`
	Retry *struct {
		MaxAttempts      int     `json:"max_attempts"`
		InitialBackoffMs float64 `json:"initial_backoff_ms"`
		MaxBackoffMs     float64 `json:"max_backoff_ms"`
	} `json:"retry"`
}

func (r *runner) connect(raw json.RawMessage) (any, error) {
	var args connectArgs
	if err := json.Unmarshal(raw, &args); err != nil {
		return nil, runnerErrorf("connect args: %v", err)
	}
	var opts []entitlements.Option
	if args.APIKey != nil {
		opts = append(opts, entitlements.WithAPIKey(*args.APIKey))
	}
	if args.ProjectID != nil {
		project, err := strconv.ParseInt(args.ProjectID.String(), 10, 64)
		if err != nil {
			return nil, runnerErrorf("connect args: project_id: %v", err)
		}
		opts = append(opts, entitlements.WithProjectID(project))
	}
	if args.TimeoutMs != nil {
		ms, err := args.TimeoutMs.Float64()
		if err != nil {
			return nil, runnerErrorf("connect args: timeout_ms: %v", err)
		}
		opts = append(opts, entitlements.WithTimeout(time.Duration(ms*float64(time.Millisecond))))
	}
	if args.TLS != nil {
		opts = append(opts, entitlements.WithTLSFiles(args.TLS.CAFile, args.TLS.CertFile, args.TLS.KeyFile,
			args.TLS.ServerName))
	} else {
		opts = append(opts, entitlements.WithInsecure())
	}
	if args.Retry != nil {
		policy := entitlements.DefaultRetryPolicy()
		policy.MaxAttempts = args.Retry.MaxAttempts
		policy.InitialBackoff = time.Duration(args.Retry.InitialBackoffMs * float64(time.Millisecond))
		policy.MaxBackoff = time.Duration(args.Retry.MaxBackoffMs * float64(time.Millisecond))
		opts = append(opts, entitlements.WithRetry(policy))
	}
	client, err := entitlements.New(args.Target, opts...)
	if err != nil {
		return nil, runnerErrorf("connect: %v", err)
	}
	if old, ok := r.clients[args.Name]; ok {
		_ = old.Close()
	}
	r.clients[args.Name] = client
	return struct{}{}, nil
}

// marshal prints a message with protojson's default options, as the protocol asks.
func marshal(m proto.Message) (json.RawMessage, error) {
	out, err := protojson.Marshal(m)
	if err != nil {
		return nil, runnerErrorf("cannot print %T: %v", m, err)
	}
	return out, nil
}

func (r *runner) answer(id json.RawMessage, result any, err error) {
	if err == nil {
		r.write(map[string]any{"id": id, "ok": true, "result": result})
		return
	}
	r.write(map[string]any{"id": id, "ok": false, "error": describe(err)})
}

// describe takes the code and message from the client's typed error, never from the text.
func describe(err error) errorBody {
	var runnerErr *runnerError
	if errors.As(err, &runnerErr) {
		return errorBody{Code: "RUNNER", Message: runnerErr.msg, Type: "runner"}
	}
	switch {
	case errors.Is(err, entitlements.ErrNotCached):
		return errorBody{Code: "NOT_CACHED", Message: err.Error(), Type: "ErrNotCached"}
	case errors.Is(err, entitlements.ErrClosed):
		return errorBody{Code: "CLOSED", Message: err.Error(), Type: "ErrClosed"}
	case entitlements.IsStale(err):
		return errorBody{Code: "STALE", Message: err.Error(), Type: fmt.Sprintf("%T", err)}
	}
	var e *entitlements.Error
	if errors.As(err, &e) {
		return errorBody{Code: e.CodeName(), Message: e.Message, Type: fmt.Sprintf("%T", e)}
	}
	// Not from the client library (the client returns only *Error): say so rather than pass it off as the
	// service's answer.
	return errorBody{Code: "RUNNER", Message: err.Error(), Type: fmt.Sprintf("%T", err)}
}

// write prints one JSON line and flushes it, so the harness sees each stream update as it comes.
func (r *runner) write(v any) {
	line, err := json.Marshal(v)
	if err != nil {
		line, _ = json.Marshal(map[string]any{"ok": false, "error": errorBody{Code: "RUNNER", Message: err.Error()}})
	}
	line = append(line, '\n')
	_, err = r.out.Write(line)
	if err == nil {
		err = r.out.Flush()
	}
	if err != nil {
		// The harness is gone: nobody is left to answer.
		fmt.Fprintln(os.Stderr, "conformance-runner: writing stdout:", err)
		r.closeAll()
		os.Exit(1)
	}
}

func (r *runner) closeAll() {
	for name, cache := range r.caches {
		_ = cache.Close()
		delete(r.caches, name)
	}
	for name, client := range r.clients {
		_ = client.Close()
		delete(r.clients, name)
	}
}
