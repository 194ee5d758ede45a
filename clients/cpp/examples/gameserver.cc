// What a game server does with the entitlement service when a player buys something: check an item, grant the
// purchase once (whatever retries happen), and follow the Xsolla order until its items are in the inventory.
//
// Configuration (environment):
//
//   ENTITLEMENTS_TARGET      host:port of the service's gRPC port (default 127.0.0.1:50051)
//   ENTITLEMENTS_API_KEY     API key with the read and write scopes (none: `make run`'s development mode)
//   ENTITLEMENTS_PROJECT_ID  Xsolla project of every call (default 0: the service decides)
//   ENTITLEMENTS_INSECURE    1 to connect in plaintext (a local `make run`, a sidecar); otherwise TLS
//   ENTITLEMENTS_CA_FILE     CA bundle that verifies the service (default: gRPC's default roots)
//   ENTITLEMENTS_CERT_FILE, ENTITLEMENTS_KEY_FILE   client certificate and key, for mTLS
//   PLAYER_ID                the player (default player-42)
//   ORDER_ID                 the Xsolla order just created for the player (default 10000001)
//   ORDER_TOKEN              the player's Pay Station token (optional; without it only webhooks feed the stream)
//   ORDER_MAX_WAIT           how long to follow the order, e.g. "30s" (the default) or "1.5s"
//
// Against `make run`:
//   ENTITLEMENTS_INSECURE=1 ENTITLEMENTS_PROJECT_ID=300001 clients/cpp/build/entitlements_gameserver
// It exits 0 when every call answered (the order may still be unpaid when ORDER_MAX_WAIT ends), 1 otherwise.
#include <google/protobuf/util/time_util.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "entitlements/client.h"

namespace {

namespace v1 = entitlements::v1;

std::string Env(const char* name, const std::string& fallback = "") {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : fallback;
}

entitlements::Error BadSetting(const std::string& message) {
  return entitlements::Error{grpc::StatusCode::INVALID_ARGUMENT, message};
}

// Builds the client from the environment, once: one client serves the whole process, from any thread.
entitlements::Result<entitlements::Client> Connect() {
  entitlements::ClientOptions options;
  options.target = Env("ENTITLEMENTS_TARGET", "127.0.0.1:50051");
  options.api_key = Env("ENTITLEMENTS_API_KEY");
  const std::string project = Env("ENTITLEMENTS_PROJECT_ID", "0");
  char* end = nullptr;
  options.project_id = std::strtoll(project.c_str(), &end, 10);
  if (end == project.c_str() || *end != '\0') return BadSetting("ENTITLEMENTS_PROJECT_ID: not a number");
  if (Env("ENTITLEMENTS_INSECURE") != "1") {
    auto tls = entitlements::TlsOptions::FromFiles(Env("ENTITLEMENTS_CA_FILE"), Env("ENTITLEMENTS_CERT_FILE"),
                                                   Env("ENTITLEMENTS_KEY_FILE"));
    if (!tls) return tls.error();
    options.tls = *tls;
  }
  return entitlements::Client::Create(options);
}

int Fail(const std::string& what, const entitlements::Error& error) {
  std::cerr << what << ": " << error << std::endl;
  return 1;
}

int Run() {
  auto client = Connect();
  if (!client) return Fail("configuration", client.error());
  const std::string player = Env("PLAYER_ID", "player-42");
  const std::string order_id = Env("ORDER_ID", "10000001");

  // Check: may the player enter the VIP lounge?
  v1::CheckEntitlementRequest check;
  check.set_user_id(player);
  check.set_sku("vip_pass");
  auto checked = client->CheckEntitlement(check);
  if (!checked) return Fail("check", checked.error());
  std::cout << player << " holds vip_pass: " << std::boolalpha << checked->active() << std::endl;

  // Grant: the idempotency key names the logical grant (this order's gold), so running this program twice, or
  // retrying after a timeout, grants once; the second time answers `replayed`.
  v1::GrantRequest grant;
  grant.set_user_id(player);
  grant.set_sku("gold_pack");
  grant.set_quantity(500);
  grant.set_idempotency_key("order-" + order_id + ":gold_pack");
  grant.set_reason("xsolla order " + order_id);
  (*grant.mutable_metadata())["order_id"] = order_id;
  auto granted = client->Grant(grant);
  if (!granted) {
    const entitlements::Error& error = granted.error();
    if (error.retryable()) return Fail("grant: not done yet; queue it and retry later with the same key", error);
    if (error.conflict()) return Fail("grant refused (key reused for another request, or held as another kind)", error);
    return Fail("grant", error);
  }
  std::cout << "granted gold_pack: " << granted->entitlement().quantity() << " held (replayed: "
            << granted->replayed() << ", project " << granted->project_id() << ")" << std::endl;

  // Follow the order until the items are in the inventory; the helper reopens the stream if it breaks.
  v1::GetOrderStatusRequest follow;
  follow.set_order_id(order_id);
  follow.set_user_id(player);
  follow.set_token(Env("ORDER_TOKEN"));
  const std::string max_wait = Env("ORDER_MAX_WAIT", "30s");
  if (!google::protobuf::util::TimeUtil::FromString(max_wait, follow.mutable_max_wait())) {
    return Fail("configuration", BadSetting("ORDER_MAX_WAIT: not a duration like \"30s\""));
  }
  auto followed = client->FollowOrder(follow, [&](const v1::OrderStatusUpdate& update) {
    const std::string status = v1::OrderStatus_Name(update.status());
    if (update.timed_out()) {
      std::cout << "order " << order_id << ": still " << status << " after " << max_wait << std::endl;
    } else if (update.entitlements_granted()) {
      std::cout << "order " << order_id << ": " << status << ", items granted (seen by "
                << v1::OrderStatusSource_Name(update.source()) << ")" << std::endl;
      return false;  // what a game server waits for: the player can use the items
    } else {
      std::cout << "order " << order_id << ": " << status << " (seen by "
                << v1::OrderStatusSource_Name(update.source()) << ")" << std::endl;
    }
    return true;
  });
  if (!followed) return Fail("follow order " + order_id, followed.error());
  std::cout << "order " << order_id << " followed (" << followed->opens << " stream opens)" << std::endl;

  // Every page of the player's inventory.
  v1::ListEntitlementsRequest inventory;
  inventory.set_user_id(player);
  auto listed = client->ForEachEntitlement(inventory, [](const v1::Entitlement& item) {
    std::cout << "  " << item.sku() << "  " << item.quantity() << "  " << v1::EntitlementKind_Name(item.kind())
              << std::endl;
    return true;
  });
  if (!listed) return Fail("list", listed.error());
  return 0;
}

}  // namespace

int main() { return Run(); }
