// Package entitlements is the Go client of the entitlement service: grant, revoke and check what a player
// owns, list entitlements, subscriptions and the audit ledger, and follow an Xsolla order until its items are
// in the player's inventory.
//
// It wraps the generated gRPC stubs (package
// github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1, whose request and response
// messages the methods take and return) with what every caller needs: the API key, TLS or mTLS, a default
// deadline, retries of UNAVAILABLE that resend the same idempotency key, an idempotency key made for writes
// that give none, one error type (*Error), iterators over every page, and FollowOrder, which reopens a
// broken order-status stream without repeating a status. CheckEntitlements checks up to 1,000 pairs in one
// call; WatchEntitlements is the raw change stream, and Cache (Client.NewCache) keeps the players a game server
// hosts in memory on it, answering checks without a call and refusing (StaleError) rather than answering stale.
//
//	client, err := entitlements.New("entitlements.internal:50051", entitlements.WithAPIKey(key))
//	if err != nil {
//		return err
//	}
//	defer client.Close()
//	resp, err := client.Grant(ctx, &v1.GrantRequest{
//		UserId: player, Sku: "gold_pack", Quantity: proto.Int64(500),
//		IdempotencyKey: "order-" + orderID + ":gold_pack",
//	})
//
// The .proto (proto/entitlements/v1/entitlements.proto in the repository) documents every field, limit and
// error; the generated package carries its comments.
package entitlements
