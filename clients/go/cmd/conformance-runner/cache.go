package main

import (
	"context"
	"encoding/json"
	"time"

	entitlements "github.com/xsolla-entitlements/entitlements/clients/go"
	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// cacheArgs are the args of the cache ops (conformance/PROTOCOL.md).
type cacheArgs struct {
	Cache          string   `json:"cache"`
	Players        []string `json:"players"`
	ProjectID      int64    `json:"project_id,string"`
	MaxStalenessMs int64    `json:"max_staleness_ms"`
	UserID         string   `json:"user_id"`
	SKU            string   `json:"sku"`
	WaitMs         *int64   `json:"wait_ms"`
	Until          *struct {
		Quantity *int64 `json:"quantity"`
		Error    string `json:"error"`
	} `json:"until"`
}

func (r *runner) cacheOp(ctx context.Context, op string, client *entitlements.Client, raw json.RawMessage) (any, error) {
	var args cacheArgs
	if err := json.Unmarshal(normalizeProjectID(raw), &args); err != nil {
		return nil, runnerErrorf("args: %v", err)
	}
	if op == "cache_open" {
		cache, err := client.NewCache(ctx, entitlements.CacheOptions{
			Players:      args.Players,
			ProjectID:    args.ProjectID,
			MaxStaleness: time.Duration(args.MaxStalenessMs) * time.Millisecond,
		})
		if err != nil {
			return nil, err
		}
		if old, ok := r.caches[args.Cache]; ok {
			_ = old.Close()
		}
		r.caches[args.Cache] = cache
		return struct{}{}, nil
	}
	cache, ok := r.caches[args.Cache]
	if !ok {
		return nil, runnerErrorf("no cache named %q", args.Cache)
	}
	switch op {
	case "cache_close":
		return struct{}{}, cache.Close() // kept under its name: later ops see ErrClosed
	case "cache_stats":
		stats := cache.Stats()
		return map[string]uint64{
			"changesApplied": stats.ChangesApplied, "snapshots": stats.Snapshots, "reopenings": stats.Reopenings,
			"gaps": stats.Gaps, "duplicates": stats.Duplicates,
		}, nil
	}
	wait := 5 * time.Second
	if args.WaitMs != nil {
		wait = time.Duration(*args.WaitMs) * time.Millisecond
	}
	deadline := time.Now().Add(wait)
	for {
		got, err := cache.Check(args.UserID, args.SKU)
		if args.Until == nil || reached(args.Until.Quantity, args.Until.Error, got, err) || time.Now().After(deadline) {
			if err != nil {
				return nil, err
			}
			return marshal(&v1.CheckEntitlementResponse{Active: got.Active, Entitlement: got.Entitlement})
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// reached says whether a check answered what `until` waits for: the entitlement's quantity (0: none held), or
// an error code of describe's.
func reached(quantity *int64, code string, got entitlements.CachedCheck, err error) bool {
	if code != "" {
		return err != nil && describe(err).Code == code
	}
	return err == nil && quantity != nil && got.Entitlement.GetQuantity() == *quantity
}

// normalizeProjectID lets project_id be a number or a string (proto3 JSON int64), as in every op.
func normalizeProjectID(raw json.RawMessage) json.RawMessage {
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil {
		return raw
	}
	if id, ok := fields["project_id"]; ok && len(id) > 0 && id[0] != '"' {
		fields["project_id"] = append(append(json.RawMessage(`"`), id...), '"')
		if out, err := json.Marshal(fields); err == nil {
			return out
		}
	}
	return raw
}
