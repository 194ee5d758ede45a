package entitlements_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	entitlements "github.com/xsolla-entitlements/entitlements/clients/go"
	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// pagedEntitlements serves skus sku-0..sku-(n-1) page by page; the page after "sku-2" is empty but not the
// last (as the service does when it skips expired items), and a token "bad" is INVALID_ARGUMENT.
func pagedEntitlements(n int) func(context.Context, *v1.ListEntitlementsRequest) (*v1.ListEntitlementsResponse, error) {
	return func(_ context.Context, req *v1.ListEntitlementsRequest) (*v1.ListEntitlementsResponse, error) {
		if req.GetPageToken() == "bad" {
			return nil, status.Error(codes.InvalidArgument, "page_token: not a token of this listing")
		}
		start := 0
		if req.GetPageToken() != "" {
			start, _ = strconv.Atoi(req.GetPageToken())
		}
		resp := &v1.ListEntitlementsResponse{}
		if req.GetPageToken() == "3" {
			resp.NextPageToken = "3e"
			return resp, nil
		}
		if req.GetPageToken() == "3e" {
			start = 3
		}
		end := min(start+int(req.GetPageSize()), n)
		for i := start; i < end; i++ {
			resp.Entitlements = append(resp.Entitlements, &v1.Entitlement{UserId: req.GetUserId(), Sku: fmt.Sprint("sku-", i)})
		}
		if end < n {
			resp.NextPageToken = strconv.Itoa(end)
		}
		return resp, nil
	}
}

// TestAllEntitlementsPagesThroughEmptyPages: the iterator yields every entitlement once, in order, across
// pages, an empty page with a token included, with the request's fields on every page.
func TestAllEntitlementsPagesThroughEmptyPages(t *testing.T) {
	f := &fakeService{list: pagedEntitlements(7)}
	client := newClient(t, serve(t, f), entitlements.WithProjectID(5))
	var skus []string
	for e, err := range client.AllEntitlements(context.Background(), &v1.ListEntitlementsRequest{UserId: "p", PageSize: 3}) {
		if err != nil {
			t.Fatal(err)
		}
		skus = append(skus, e.GetSku())
	}
	want := "[sku-0 sku-1 sku-2 sku-3 sku-4 sku-5 sku-6]"
	if fmt.Sprint(skus) != want {
		t.Fatalf("skus = %v, want %s", skus, want)
	}
	calls := f.calls()
	if len(calls) != 4 { // 0-2, the empty page, 3-5, 6
		t.Fatalf("%d pages asked, want 4", len(calls))
	}
	for i, c := range calls {
		req := c.(*v1.ListEntitlementsRequest)
		if req.GetUserId() != "p" || req.GetPageSize() != 3 || req.GetProjectId() != 5 {
			t.Fatalf("page %d request = %v", i, req)
		}
	}
}

// TestAllEntitlementsStopsOnBreak: leaving the loop asks for no further page.
func TestAllEntitlementsStopsOnBreak(t *testing.T) {
	f := &fakeService{list: pagedEntitlements(100)}
	client := newClient(t, serve(t, f))
	n := 0
	for _, err := range client.AllEntitlements(context.Background(), &v1.ListEntitlementsRequest{PageSize: 10}) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 12 {
			break
		}
	}
	if len(f.calls()) != 2 {
		t.Fatalf("%d pages asked after breaking in the second, want 2", len(f.calls()))
	}
}

// TestAllEntitlementsYieldsError: a failed page yields the error once and ends the iteration.
func TestAllEntitlementsYieldsError(t *testing.T) {
	f := &fakeService{list: pagedEntitlements(10)}
	client := newClient(t, serve(t, f))
	var errs []error
	items := 0
	for e, err := range client.AllEntitlements(context.Background(), &v1.ListEntitlementsRequest{PageToken: "bad"}) {
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if e != nil {
			items++
		}
	}
	if len(errs) != 1 || items != 0 || !entitlements.IsInvalidArgument(errs[0]) {
		t.Fatalf("items %d, errors %v: want one InvalidArgument", items, errs)
	}
}

// TestAllLedgerEntries: the ledger iterator follows next_page_token to the end.
func TestAllLedgerEntries(t *testing.T) {
	f := &fakeService{ledger: func(_ context.Context, req *v1.ListLedgerRequest) (*v1.ListLedgerResponse, error) {
		switch req.GetPageToken() {
		case "":
			return &v1.ListLedgerResponse{Entries: []*v1.LedgerEntry{{EntryId: "3-0"}, {EntryId: "2-0"}}, NextPageToken: "t"}, nil
		case "t":
			return &v1.ListLedgerResponse{Entries: []*v1.LedgerEntry{{EntryId: "1-0"}}}, nil
		}
		return nil, status.Error(codes.InvalidArgument, "page_token")
	}}
	client := newClient(t, serve(t, f))
	var ids []string
	for e, err := range client.AllLedgerEntries(context.Background(), &v1.ListLedgerRequest{UserId: "p"}) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.GetEntryId())
	}
	if fmt.Sprint(ids) != "[3-0 2-0 1-0]" {
		t.Fatalf("entries = %v", ids)
	}
}
