// Command gameserver shows what a game server does with the entitlement service when a player buys something:
// check an item, grant the purchase once (whatever retries happen), and follow the Xsolla order until its items
// are in the player's inventory.
//
// Configuration (environment):
//
//	ENTITLEMENTS_TARGET      host:port of the service's gRPC port (default 127.0.0.1:50051)
//	ENTITLEMENTS_API_KEY     API key with the read and write scopes (none: `make run`'s development mode)
//	ENTITLEMENTS_PROJECT_ID  Xsolla project of every call (default 0: the service decides)
//	ENTITLEMENTS_CA_FILE     CA bundle that verifies the service (default: the system's roots)
//	ENTITLEMENTS_INSECURE    1 to connect in plaintext (a local `make run`, a sidecar)
//	PLAYER_ID                the player (default player-42)
//	ORDER_ID                 the Xsolla order just created for the player (default 10000001)
//	ORDER_TOKEN              the player's Pay Station token (optional; without it only webhooks feed the stream)
//	ORDER_MAX_WAIT           how long to follow the order (default 30s)
//
// Against `make run`: ENTITLEMENTS_INSECURE=1 ENTITLEMENTS_PROJECT_ID=300001 go run ./examples/gameserver
// It exits 0 when every call answered (the order may still be unpaid when ORDER_MAX_WAIT ends), 1 otherwise.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	entitlements "github.com/xsolla-entitlements/entitlements/clients/go"
	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

func main() {
	log.SetFlags(0)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	client, err := connect()
	if err != nil {
		return err
	}
	defer client.Close()

	player := env("PLAYER_ID", "player-42")
	orderID := env("ORDER_ID", "10000001")

	// Check: may the player enter the VIP lounge?
	check, err := client.CheckEntitlement(ctx, &v1.CheckEntitlementRequest{UserId: player, Sku: "vip_pass"})
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	fmt.Printf("%s holds vip_pass: %v\n", player, check.GetActive())

	// Grant: the idempotency key names the logical grant (this order's gold), so running this program twice,
	// or retrying after a timeout, grants once; the second time answers Replayed.
	grant, err := client.Grant(ctx, &v1.GrantRequest{
		UserId:         player,
		Sku:            "gold_pack",
		Quantity:       proto.Int64(500),
		IdempotencyKey: "order-" + orderID + ":gold_pack",
		Reason:         "xsolla order " + orderID,
		Metadata:       map[string]string{"order_id": orderID},
	})
	switch {
	case entitlements.IsRetryable(err):
		// The client already retried; queue the grant and call again later with the same key.
		return fmt.Errorf("grant: service unavailable, retry later with the same key: %w", err)
	case entitlements.IsConflict(err):
		return fmt.Errorf("grant refused (key reused for another request, or sku held as another kind): %w", err)
	case err != nil:
		return fmt.Errorf("grant: %w", err)
	}
	fmt.Printf("granted gold_pack: %d held (replayed: %v, project %d)\n",
		grant.GetEntitlement().GetQuantity(), grant.GetReplayed(), grant.GetProjectId())

	// Follow the order until the items are in the inventory; the helper reopens the stream if it breaks.
	maxWait, err := time.ParseDuration(env("ORDER_MAX_WAIT", "30s"))
	if err != nil {
		return fmt.Errorf("ORDER_MAX_WAIT: %w", err)
	}
	req := &v1.GetOrderStatusRequest{
		OrderId: orderID, UserId: player, Token: os.Getenv("ORDER_TOKEN"), MaxWait: durationpb.New(maxWait),
	}
	result, err := client.FollowOrder(ctx, req, func(u *v1.OrderStatusUpdate) error {
		switch {
		case u.GetTimedOut():
			fmt.Printf("order %s: still %v after %v\n", orderID, u.GetStatus(), maxWait)
		case u.GetEntitlementsGranted():
			fmt.Printf("order %s: %v, items granted (seen by %v)\n", orderID, u.GetStatus(), u.GetSource())
			return entitlements.StopFollowing // what a game server waits for: the player can use the items
		default:
			fmt.Printf("order %s: %v (seen by %v)\n", orderID, u.GetStatus(), u.GetSource())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("follow order %s: %w", orderID, err)
	}
	fmt.Printf("order %s followed (%d stream opens)\n", orderID, result.Opens)

	// Every page of the player's inventory.
	for e, err := range client.AllEntitlements(ctx, &v1.ListEntitlementsRequest{UserId: player}) {
		if err != nil {
			return fmt.Errorf("list: %w", err)
		}
		fmt.Printf("  %-20s %6d  %v\n", e.GetSku(), e.GetQuantity(), e.GetKind())
	}
	return nil
}

// connect builds the client from the environment; one client serves the whole process.
func connect() (*entitlements.Client, error) {
	opts := []entitlements.Option{entitlements.WithAPIKey(os.Getenv("ENTITLEMENTS_API_KEY"))}
	if project := os.Getenv("ENTITLEMENTS_PROJECT_ID"); project != "" {
		id, err := strconv.ParseInt(project, 10, 64)
		if err != nil {
			return nil, errors.New("ENTITLEMENTS_PROJECT_ID: not a number")
		}
		opts = append(opts, entitlements.WithProjectID(id))
	}
	switch {
	case os.Getenv("ENTITLEMENTS_INSECURE") == "1":
		opts = append(opts, entitlements.WithInsecure())
	case os.Getenv("ENTITLEMENTS_CA_FILE") != "":
		opts = append(opts, entitlements.WithTLSFiles(os.Getenv("ENTITLEMENTS_CA_FILE"), "", "", ""))
	}
	return entitlements.New(env("ENTITLEMENTS_TARGET", "127.0.0.1:50051"), opts...)
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
