package entitlements_test

import (
	"context"
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
