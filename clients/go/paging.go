package entitlements

import (
	"context"
	"iter"

	"google.golang.org/grpc"

	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// AllEntitlements returns an iterator over every entitlement of a player, in sku order, asking for the pages
// one after another as the loop goes (from req.PageToken, or the first page when it is empty). Each page is
// one ListEntitlements call with its own default deadline. A failed call yields (nil, err) and ends the
// iteration; breaking out of the loop asks for no further page.
//
//	for e, err := range client.AllEntitlements(ctx, &v1.ListEntitlementsRequest{UserId: player}) {
//		if err != nil {
//			return err
//		}
//		fmt.Println(e.GetSku(), e.GetQuantity())
//	}
func (c *Client) AllEntitlements(
	ctx context.Context, req *v1.ListEntitlementsRequest, opts ...grpc.CallOption,
) iter.Seq2[*v1.Entitlement, error] {
	return func(yield func(*v1.Entitlement, error) bool) {
		page := cloneOf(req)
		for {
			resp, err := c.ListEntitlements(ctx, page, opts...)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, e := range resp.GetEntitlements() {
				if !yield(e, nil) {
					return
				}
			}
			// Only an empty token ends the listing: a page may be empty while more follow (AIP-158).
			if resp.GetNextPageToken() == "" {
				return
			}
			page.PageToken = resp.GetNextPageToken()
		}
	}
}

// AllLedgerEntries returns an iterator over a player's whole audit ledger, newest first, as AllEntitlements
// does for entitlements. Entries written while it runs are not in this listing.
func (c *Client) AllLedgerEntries(
	ctx context.Context, req *v1.ListLedgerRequest, opts ...grpc.CallOption,
) iter.Seq2[*v1.LedgerEntry, error] {
	return func(yield func(*v1.LedgerEntry, error) bool) {
		page := cloneOf(req)
		for {
			resp, err := c.ListLedger(ctx, page, opts...)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, e := range resp.GetEntries() {
				if !yield(e, nil) {
					return
				}
			}
			if resp.GetNextPageToken() == "" {
				return
			}
			page.PageToken = resp.GetNextPageToken()
		}
	}
}
