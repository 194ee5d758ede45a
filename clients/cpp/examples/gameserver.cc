// A game server's use of the entitlement service: connect from environment variables, check an item, grant a
// purchase with an idempotency key derived from the order, and follow an order until its items are granted.
//
//   ENTITLEMENTS_TARGET=localhost:50051 ENTITLEMENTS_API_KEY=dev-key ./entitlements_gameserver player-1 order-123
//
// Environment: ENTITLEMENTS_TARGET (host:port, required), ENTITLEMENTS_API_KEY, ENTITLEMENTS_PROJECT_ID,
// ENTITLEMENTS_CA_FILE (turns TLS on; with ENTITLEMENTS_CERT_FILE and ENTITLEMENTS_KEY_FILE for mTLS).
#include <cstdlib>
#include <iostream>
#include <string>

#include "entitlements/client.h"

namespace {

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

// Reads the connection settings once, at the edge.
entitlements::Result<entitlements::Client> ConnectFromEnv() {
  entitlements::ClientOptions options;
  options.target = Env("ENTITLEMENTS_TARGET");
  options.api_key = Env("ENTITLEMENTS_API_KEY");
  if (!Env("ENTITLEMENTS_PROJECT_ID").empty()) options.project_id = std::stoll(Env("ENTITLEMENTS_PROJECT_ID"));
  if (!Env("ENTITLEMENTS_CA_FILE").empty()) {
    auto tls = entitlements::TlsOptions::FromFiles(Env("ENTITLEMENTS_CA_FILE"), Env("ENTITLEMENTS_CERT_FILE"),
                                                   Env("ENTITLEMENTS_KEY_FILE"));
    if (!tls) return tls.error();
    options.tls = *tls;
  }
  return entitlements::Client::Create(options);
}

// Gives the player what an order bought. The key names this grant, not this attempt: whoever calls again for the
// same order (a retry after a timeout, a restarted server, a second webhook) gets the first answer back with
// `replayed` set, and the player is granted once.
bool DeliverPurchase(const entitlements::Client& client, const std::string& player, const std::string& order_id) {
  entitlements::v1::GrantRequest grant;
  grant.set_user_id(player);
  grant.set_sku("gold_pack");
  grant.set_quantity(500);
  grant.set_idempotency_key("order-" + order_id + ":gold_pack");
  grant.set_reason("in-game purchase");
  (*grant.mutable_metadata())["order_id"] = order_id;

  auto granted = client.Grant(grant);
  if (!granted) {
    const entitlements::Error& error = granted.error();
    if (error.retryable()) {
      std::cerr << "grant not done yet, queue it and retry with the same order id: " << error << '\n';
    } else {
      std::cerr << "grant refused: " << error << '\n';  // e.g. the key reused for another request
    }
    return false;
  }
  std::cout << "gold: " << granted->entitlement().quantity() << (granted->replayed() ? " (replayed)" : "") << '\n';
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " PLAYER_ID ORDER_ID\n";
    return 2;
  }
  const std::string player = argv[1];
  const std::string order_id = argv[2];

  auto client = ConnectFromEnv();
  if (!client) {
    std::cerr << "cannot configure the client: " << client.error() << '\n';
    return 1;
  }

  entitlements::v1::CheckEntitlementRequest check;
  check.set_user_id(player);
  check.set_sku("vip_pass");
  auto checked = client->CheckEntitlement(check);
  if (!checked) {
    std::cerr << "check failed: " << checked.error() << '\n';
    return 1;
  }
  std::cout << "vip_pass active: " << std::boolalpha << checked->active() << '\n';

  if (!DeliverPurchase(*client, player, order_id)) return 1;

  // Follow an Xsolla order (the player paying on Pay Station) until its items are in the inventory; the helper
  // reopens the stream if the service restarts, and never reports a status twice.
  entitlements::v1::GetOrderStatusRequest follow;
  follow.set_order_id(order_id);
  follow.set_user_id(player);
  follow.mutable_max_wait()->set_seconds(60);
  auto followed = client->FollowOrder(follow, [](const entitlements::v1::OrderStatusUpdate& update) {
    std::cout << "order " << update.order_id() << ": " << entitlements::v1::OrderStatus_Name(update.status())
              << (update.entitlements_granted() ? ", items granted" : "") << (update.timed_out() ? ", timed out" : "")
              << std::endl;  // flushed: updates may be minutes apart
  });
  if (!followed) {
    std::cerr << "following the order failed: " << followed.error() << '\n';
    return 1;
  }
  std::cout << "stream opened " << followed->opens << " time(s)\n";
  return 0;
}
