// Builds a client from the installed headers and library, and makes one call to a port nothing listens on.
#include <entitlements/client.h>

#include <iostream>

int main() {
  entitlements::ClientOptions options;
  options.target = "127.0.0.1:1";
  options.retry = entitlements::RetryPolicy::NoRetries();
  auto client = entitlements::Client::Create(options);
  if (!client) return 1;
  entitlements::v1::CheckEntitlementRequest request;
  request.set_user_id("player-1");
  request.set_sku("vip_pass");
  auto checked = client->CheckEntitlement(request);
  std::cout << (checked ? "unexpected success" : checked.error().ToString()) << '\n';
  return !checked && checked.error().code == grpc::StatusCode::UNAVAILABLE ? 0 : 1;
}
