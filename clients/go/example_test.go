package entitlements_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"google.golang.org/protobuf/proto"

	entitlements "github.com/xsolla-entitlements/entitlements/clients/go"
	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// The README's example: grant a purchase once, whatever retries happen.
func Example() {
	grant := func(ctx context.Context, playerID, orderID string) error {
		client, err := entitlements.New("entitlements.internal:50051",
			entitlements.WithAPIKey(os.Getenv("ENTITLEMENTS_API_KEY")), entitlements.WithProjectID(308077))
		if err != nil {
			return err
		}
		defer client.Close()
		// The key names the logical grant: a retry after a crash or timeout cannot grant twice.
		resp, err := client.Grant(ctx, &v1.GrantRequest{UserId: playerID, Sku: "gold_pack",
			Quantity: proto.Int64(500), IdempotencyKey: "order-" + orderID + ":gold_pack"})
		if err != nil {
			return err // an *entitlements.Error
		}
		fmt.Println(resp.GetEntitlement().GetQuantity(), resp.GetReplayed())
		return nil
	}
	_ = grant
}

// Following an order until its items are granted, across broken streams.
func ExampleClient_FollowOrder() {
	follow := func(ctx context.Context, client *entitlements.Client, orderID, playerID string) error {
		req := &v1.GetOrderStatusRequest{OrderId: orderID, UserId: playerID}
		_, err := client.FollowOrder(ctx, req, func(u *v1.OrderStatusUpdate) error {
			fmt.Println(u.GetStatus(), u.GetSource())
			if u.GetEntitlementsGranted() {
				return entitlements.StopFollowing
			}
			return nil
		})
		return err
	}
	_ = follow
}

// A game server's cache of the players in its lobby: checks from memory, the service when the cache cannot vouch.
func ExampleClient_NewCache() {
	owns := func(ctx context.Context, client *entitlements.Client, lobby []string, playerID, sku string) (bool, error) {
		cache, err := client.NewCache(ctx, entitlements.CacheOptions{
			Players: lobby,
			OnState: func(s entitlements.CacheState, err error) { fmt.Println("entitlement cache:", s, err) },
		})
		if err != nil {
			return false, err
		}
		defer cache.Close()
		got, err := cache.Check(playerID, sku)
		if errors.Is(err, entitlements.ErrNotCached) || entitlements.IsStale(err) {
			resp, err := client.CheckEntitlement(ctx, &v1.CheckEntitlementRequest{UserId: playerID, Sku: sku})
			return resp.GetActive(), err
		}
		return got.Active, err
	}
	_ = owns
}
