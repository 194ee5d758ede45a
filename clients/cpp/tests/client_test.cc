// The unary calls against the in-process fake service: metadata, deadlines, retries, keys, errors, paging.
#include <gtest/gtest.h>

#include <atomic>
#include <regex>
#include <set>
#include <thread>

#include "fake_service.h"

namespace entitlements {
namespace {

using testing::FakeServer;
using namespace std::chrono_literals;

v1::GrantRequest GrantOf(const std::string& user, const std::string& sku) {
  v1::GrantRequest request;
  request.set_user_id(user);
  request.set_sku(sku);
  return request;
}

// Answers a grant with the entitlement it asked for.
grpc::Status Granted(grpc::ServerContext*, const v1::GrantRequest& request, v1::GrantResponse* response) {
  response->mutable_entitlement()->set_user_id(request.user_id());
  response->mutable_entitlement()->set_sku(request.sku());
  response->mutable_entitlement()->set_quantity(request.has_quantity() ? request.quantity() : 1);
  response->set_project_id(request.project_id());
  return grpc::Status::OK;
}

TEST(ClientTest, SendsTheApiKeyAsBearerMetadataWithEveryCall) {
  FakeServer server;
  server.service().grant = Granted;
  server.service().check = [](auto*, auto&, v1::CheckEntitlementResponse* r) {
    r->set_active(true);
    return grpc::Status::OK;
  };
  Client client = server.NewClient();

  ASSERT_TRUE(client.Grant(GrantOf("p1", "gold")).ok());
  CallOptions with_request_id;
  with_request_id.metadata.emplace_back("x-request-id", "r-42");
  Result<v1::CheckEntitlementResponse> checked =
      client.CheckEntitlement(v1::CheckEntitlementRequest(), with_request_id);
  ASSERT_TRUE(checked.ok()) << checked.error();
  EXPECT_TRUE(checked->active());

  auto calls = server.service().calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].authorization, "Bearer test-key");
  EXPECT_EQ(calls[1].authorization, "Bearer test-key");
  EXPECT_NE(std::find(calls[1].metadata.begin(), calls[1].metadata.end(),
                      std::pair<std::string, std::string>("x-request-id", "r-42")),
            calls[1].metadata.end());
}

TEST(ClientTest, RefusesMetadataGrpcWouldRejectBeforeSendingAnything) {
  FakeServer server;
  server.service().check = [](auto*, auto&, auto*) { return grpc::Status::OK; };
  Client client = server.NewClient();
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"X-Request-Id", "r"}, {"grpc-timeout", "1S"}, {"", "v"}, {"x-note", "line\nbreak"}}) {
    CallOptions options;
    options.metadata.emplace_back(key, value);
    Result<v1::CheckEntitlementResponse> checked = client.CheckEntitlement(v1::CheckEntitlementRequest(), options);
    ASSERT_FALSE(checked.ok()) << key;
    EXPECT_TRUE(checked.error().invalid_argument()) << key;
    EXPECT_NE(checked.error().message.find("CallOptions.metadata"), std::string::npos);
  }
  CallOptions binary;
  binary.metadata.emplace_back("x-trace-bin", std::string("\0\xff", 2));
  EXPECT_TRUE(client.CheckEntitlement(v1::CheckEntitlementRequest(), binary).ok());
  EXPECT_EQ(server.service().calls().size(), 1u);
}

TEST(ClientTest, AnEnormousTimeoutMeansNoDeadlineRatherThanAnOverflow) {
  FakeServer server;
  server.service().check = [](auto*, auto&, auto*) { return grpc::Status::OK; };
  Client client = server.NewClient();
  CallOptions options;
  options.timeout = std::chrono::milliseconds::max();
  EXPECT_TRUE(client.CheckEntitlement(v1::CheckEntitlementRequest(), options).ok());
}

TEST(ClientTest, SendsNoAuthorizationWithoutAnApiKey) {
  FakeServer server;
  server.service().check = [](auto*, auto&, auto*) { return grpc::Status::OK; };
  ClientOptions options = server.Options();
  options.api_key.clear();
  Client client = FakeServer::NewClient(options);

  ASSERT_TRUE(client.CheckEntitlement(v1::CheckEntitlementRequest()).ok());
  EXPECT_EQ(server.service().calls().at(0).authorization, "");
}

TEST(ClientTest, UnaryCallsCarryTheDefaultDeadlineOrTheirOwn) {
  FakeServer server;
  server.service().check = [](auto*, auto&, auto*) { return grpc::Status::OK; };
  Client client = server.NewClient();

  ASSERT_TRUE(client.CheckEntitlement(v1::CheckEntitlementRequest()).ok());
  CallOptions short_call;
  short_call.timeout = 1500ms;
  ASSERT_TRUE(client.CheckEntitlement(v1::CheckEntitlementRequest(), short_call).ok());

  // gRPC rounds the timeout it sends up a little (the grpc-timeout header's units), hence the slack above.
  auto calls = server.service().calls();
  ASSERT_TRUE(calls[0].deadline_in.has_value());
  EXPECT_GT(calls[0].deadline_in->count(), 4000);
  EXPECT_LE(calls[0].deadline_in->count(), 5100);
  ASSERT_TRUE(calls[1].deadline_in.has_value());
  EXPECT_GT(calls[1].deadline_in->count(), 500);
  EXPECT_LE(calls[1].deadline_in->count(), 1600);
}

TEST(ClientTest, ASlowServiceEndsTheCallWithDeadlineExceeded) {
  FakeServer server;
  server.service().check = [](grpc::ServerContext* context, auto&, auto*) {
    while (!context->IsCancelled()) std::this_thread::sleep_for(5ms);
    return grpc::Status::CANCELLED;
  };
  ClientOptions options = server.Options();
  options.default_timeout = 100ms;
  Client client = FakeServer::NewClient(options);

  auto started = std::chrono::steady_clock::now();
  Result<v1::CheckEntitlementResponse> checked = client.CheckEntitlement(v1::CheckEntitlementRequest());
  ASSERT_FALSE(checked.ok());
  EXPECT_EQ(checked.error().code, grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(checked.error().retryable());
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2s);
}

TEST(ClientTest, RetriesUnavailableResendingTheCallersIdempotencyKey) {
  FakeServer server;
  std::atomic<int> attempts{0};
  server.service().grant = [&](grpc::ServerContext* context, const v1::GrantRequest& request,
                               v1::GrantResponse* response) {
    if (++attempts < 3) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "store unreachable");
    return Granted(context, request, response);
  };
  Client client = server.NewClient();

  v1::GrantRequest request = GrantOf("p1", "gold");
  request.set_idempotency_key("order-7:gold");
  Result<v1::GrantResponse> granted = client.Grant(request);
  ASSERT_TRUE(granted.ok()) << granted.error();

  auto calls = server.service().calls();
  ASSERT_EQ(calls.size(), 3u);
  for (const auto& call : calls) {
    EXPECT_NE(call.request.find("idempotency_key: \"order-7:gold\""), std::string::npos) << call.request;
  }
}

TEST(ClientTest, ChecksABatchWithTheClientsProjectRetryingUnavailable) {
  FakeServer server;
  std::atomic<int> attempts{0};
  server.service().check_batch = [&](auto*, const v1::CheckEntitlementsRequest& request,
                                     v1::CheckEntitlementsResponse* response) {
    if (++attempts == 1) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "store unreachable");
    for (int i = 0; i < request.checks_size(); ++i) {
      if (request.checks(i).sku().empty()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "checks[" + std::to_string(i) + "].sku: is required");
      }
      response->add_results()->set_active(request.checks(i).sku() == "gold");
    }
    return grpc::Status::OK;
  };
  ClientOptions options = server.Options();
  options.project_id = 308077;
  Client client = FakeServer::NewClient(options);

  v1::CheckEntitlementsRequest request;
  for (const auto& [user, sku] : std::vector<std::pair<std::string, std::string>>{
           {"a", "gold"}, {"b", "silver"}, {"a", "gold"}}) {
    auto* check = request.add_checks();
    check->set_user_id(user);
    check->set_sku(sku);
  }
  Result<v1::CheckEntitlementsResponse> checked = client.CheckEntitlements(request);
  ASSERT_TRUE(checked.ok()) << checked.error();
  ASSERT_EQ(checked->results_size(), 3);
  EXPECT_TRUE(checked->results(0).active());
  EXPECT_FALSE(checked->results(1).active());
  EXPECT_TRUE(checked->results(2).active());
  auto calls = server.service().calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_NE(calls[1].request.find("project_id: 308077"), std::string::npos) << calls[1].request;
  EXPECT_TRUE(calls[1].deadline_in.has_value());

  request.mutable_checks(1)->clear_sku();
  checked = client.CheckEntitlements(request);
  ASSERT_FALSE(checked.ok());
  EXPECT_TRUE(checked.error().invalid_argument());
  EXPECT_EQ(checked.error().message, "checks[1].sku: is required");
}

TEST(ClientTest, MakesAUuidV4KeyWhenNoneIsGivenAndKeepsItAcrossRetries) {
  FakeServer server;
  std::mutex mutex;
  std::vector<std::string> keys;
  std::atomic<int> attempts{0};
  server.service().revoke = [&](auto*, const v1::RevokeRequest& request, v1::RevokeResponse*) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      keys.push_back(request.idempotency_key());
    }
    // The first call fails once, then every attempt succeeds.
    return ++attempts == 1 ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "try again") : grpc::Status::OK;
  };
  Client client = server.NewClient();
  v1::RevokeRequest request;
  request.set_user_id("p1");
  request.set_sku("gold");

  ASSERT_TRUE(client.Revoke(request).ok());
  ASSERT_TRUE(client.Revoke(request).ok());

  ASSERT_EQ(keys.size(), 3u);
  const std::regex uuid_v4("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  for (const auto& key : keys) EXPECT_TRUE(std::regex_match(key, uuid_v4)) << key;
  EXPECT_EQ(keys[0], keys[1]) << "a retry must resend the same key";
  EXPECT_NE(keys[1], keys[2]) << "each call without a key gets its own";
}

TEST(ClientTest, GivesUpAfterMaxAttempts) {
  FakeServer server;
  server.service().grant = [](auto*, auto&, auto*) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "store unreachable");
  };
  ClientOptions options = server.Options();
  options.retry.max_attempts = 3;
  Client client = FakeServer::NewClient(options);

  Result<v1::GrantResponse> granted = client.Grant(GrantOf("p1", "gold"));
  ASSERT_FALSE(granted.ok());
  EXPECT_EQ(granted.error().code, grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(granted.error().message, "store unreachable");
  EXPECT_EQ(server.service().calls().size(), 3u);
}

TEST(ClientTest, DoesNotRetryWhatIsNotRetryableOrWhenRetriesAreOff) {
  FakeServer server;
  server.service().grant = [](auto*, auto&, auto*) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "idempotency_key: used for another request");
  };
  server.service().revoke = [](auto*, auto&, auto*) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "store unreachable");
  };
  ClientOptions options = server.Options();
  Client client = FakeServer::NewClient(options);
  options.retry = RetryPolicy::NoRetries();
  Client no_retries = FakeServer::NewClient(options);

  EXPECT_EQ(client.Grant(GrantOf("p1", "gold")).error().code, grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(no_retries.Revoke(v1::RevokeRequest()).error().code, grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(server.service().calls().size(), 2u);
}

TEST(ClientTest, MapsEveryStatusToAnErrorWithTheServersCodeAndMessage) {
  FakeServer server;
  std::atomic<grpc::StatusCode> answer{grpc::StatusCode::OK};
  server.service().check = [&](auto*, auto&, auto*) {
    grpc::StatusCode code = answer;
    return grpc::Status(code, "said " + std::to_string(code));
  };
  ClientOptions options = server.Options();
  options.retry = RetryPolicy::NoRetries();
  Client client = FakeServer::NewClient(options);

  struct Case {
    grpc::StatusCode code;
    const char* name;
    bool retryable, invalid, auth, permission, conflict, not_found;
  };
  const Case cases[] = {
      {grpc::StatusCode::INVALID_ARGUMENT, "INVALID_ARGUMENT", false, true, false, false, false, false},
      {grpc::StatusCode::UNAUTHENTICATED, "UNAUTHENTICATED", false, false, true, false, false, false},
      {grpc::StatusCode::PERMISSION_DENIED, "PERMISSION_DENIED", false, false, false, true, false, false},
      {grpc::StatusCode::ALREADY_EXISTS, "ALREADY_EXISTS", false, false, false, false, true, false},
      {grpc::StatusCode::FAILED_PRECONDITION, "FAILED_PRECONDITION", false, false, false, false, true, false},
      {grpc::StatusCode::NOT_FOUND, "NOT_FOUND", false, false, false, false, false, true},
      {grpc::StatusCode::UNAVAILABLE, "UNAVAILABLE", true, false, false, false, false, false},
      {grpc::StatusCode::RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED", true, false, false, false, false, false},
      {grpc::StatusCode::INTERNAL, "INTERNAL", false, false, false, false, false, false},
  };
  for (const Case& c : cases) {
    answer = c.code;
    Result<v1::CheckEntitlementResponse> checked = client.CheckEntitlement(v1::CheckEntitlementRequest());
    ASSERT_FALSE(checked.ok()) << c.name;
    const Error& error = checked.error();
    EXPECT_EQ(error.code, c.code);
    EXPECT_EQ(error.code_name(), c.name);
    EXPECT_EQ(error.message, "said " + std::to_string(c.code));
    EXPECT_EQ(error.ToString(), std::string(c.name) + ": said " + std::to_string(c.code));
    EXPECT_EQ(error.retryable(), c.retryable) << c.name;
    EXPECT_EQ(error.invalid_argument(), c.invalid) << c.name;
    EXPECT_EQ(error.unauthenticated(), c.auth) << c.name;
    EXPECT_EQ(error.permission_denied(), c.permission) << c.name;
    EXPECT_EQ(error.conflict(), c.conflict) << c.name;
    EXPECT_EQ(error.not_found(), c.not_found) << c.name;
  }
}

TEST(ClientTest, AnUnreachableTargetIsUnavailableNotAFailedCreate) {
  ClientOptions options;
  options.target = "127.0.0.1:1";  // nothing listens on port 1
  options.retry = RetryPolicy::NoRetries();
  Result<Client> client = Client::Create(options);
  ASSERT_TRUE(client.ok());
  Result<v1::CheckEntitlementResponse> checked = client->CheckEntitlement(v1::CheckEntitlementRequest());
  ASSERT_FALSE(checked.ok());
  EXPECT_EQ(checked.error().code, grpc::StatusCode::UNAVAILABLE);
}

TEST(ClientTest, FillsTheClientsProjectOnlyWhenTheRequestHasNone) {
  FakeServer server;
  server.service().grant = Granted;
  ClientOptions options = server.Options();
  options.project_id = 308077;
  Client client = FakeServer::NewClient(options);

  EXPECT_EQ(client.Grant(GrantOf("p1", "gold"))->project_id(), 308077);
  v1::GrantRequest other = GrantOf("p1", "gold");
  other.set_project_id(310000);
  EXPECT_EQ(client.Grant(other)->project_id(), 310000);
}

TEST(ClientTest, ForEachEntitlementFollowsEveryPageTokenIncludingEmptyPages) {
  FakeServer server;
  // Pages: [a b] -> "t1", [] -> "t2", [c d] -> "t3", [e] -> "".
  server.service().list_entitlements = [](auto*, const v1::ListEntitlementsRequest& request,
                                          v1::ListEntitlementsResponse* response) {
    static const std::map<std::string, std::pair<std::vector<std::string>, std::string>> pages = {
        {"", {{"a", "b"}, "t1"}}, {"t1", {{}, "t2"}}, {"t2", {{"c", "d"}, "t3"}}, {"t3", {{"e"}, ""}}};
    auto page = pages.find(request.page_token());
    if (page == pages.end()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "page_token: unknown");
    for (const auto& sku : page->second.first) response->add_entitlements()->set_sku(sku);
    response->set_next_page_token(page->second.second);
    return grpc::Status::OK;
  };
  Client client = server.NewClient();
  v1::ListEntitlementsRequest request;
  request.set_user_id("p1");
  request.set_page_size(2);

  std::vector<std::string> skus;
  Result<std::int64_t> count = client.ForEachEntitlement(request, [&](const v1::Entitlement& e) {
    skus.push_back(e.sku());
    return true;
  });
  ASSERT_TRUE(count.ok()) << count.error();
  EXPECT_EQ(*count, 5);
  EXPECT_EQ(skus, (std::vector<std::string>{"a", "b", "c", "d", "e"}));
  auto calls = server.service().calls();
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_NE(calls[3].request.find("page_token: \"t3\""), std::string::npos);
  EXPECT_NE(calls[3].request.find("page_size: 2"), std::string::npos);

  // Returning false stops at once: no further page is fetched.
  skus.clear();
  count = client.ForEachEntitlement(request, [&](const v1::Entitlement& e) {
    skus.push_back(e.sku());
    return e.sku() != "c";
  });
  EXPECT_EQ(*count, 3);
  EXPECT_EQ(server.service().calls().size(), 7u);
}

TEST(ClientTest, ForEachEntitlementEndsWithTheErrorOfAFailedPage) {
  FakeServer server;
  server.service().list_entitlements = [](auto*, const v1::ListEntitlementsRequest& request,
                                          v1::ListEntitlementsResponse* response) {
    if (!request.page_token().empty()) return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "no read scope");
    response->add_entitlements()->set_sku("a");
    response->set_next_page_token("t1");
    return grpc::Status::OK;
  };
  Client client = server.NewClient();
  int seen = 0;
  Result<std::int64_t> count = client.ForEachEntitlement(v1::ListEntitlementsRequest(), [&](auto&) {
    ++seen;
    return true;
  });
  ASSERT_FALSE(count.ok());
  EXPECT_EQ(count.error().code, grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(seen, 1);
}

TEST(ClientTest, ListSubscriptionsAndLedgerPassRequestsAndResponsesThrough) {
  FakeServer server;
  server.service().list_subscriptions = [](auto*, const v1::ListSubscriptionsRequest& request,
                                           v1::ListSubscriptionsResponse* response) {
    response->add_subscriptions()->set_id(request.user_id() + ":vip");
    response->set_has_more(request.offset() == 0);
    return grpc::Status::OK;
  };
  server.service().list_ledger = [](auto*, const v1::ListLedgerRequest& request, v1::ListLedgerResponse* response) {
    response->add_entries()->set_summary("granted 100 gold (0 -> 100)");
    response->set_next_page_token(request.page_token() + "next");
    return grpc::Status::OK;
  };
  Client client = server.NewClient();
  v1::ListSubscriptionsRequest subscriptions;
  subscriptions.set_user_id("p1");
  v1::ListLedgerRequest ledger;
  ledger.set_page_token("t");

  auto listed = client.ListSubscriptions(subscriptions);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->subscriptions(0).id(), "p1:vip");
  EXPECT_TRUE(listed->has_more());
  auto entries = client.ListLedger(ledger);
  ASSERT_TRUE(entries.ok());
  EXPECT_EQ(entries->next_page_token(), "tnext");
  EXPECT_EQ(entries->entries(0).summary(), "granted 100 gold (0 -> 100)");
}

TEST(ClientTest, IsSafeToShareBetweenThreads) {
  FakeServer server;
  server.service().grant = Granted;
  Client client = server.NewClient();
  std::atomic<int> succeeded{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        if (client.Grant(GrantOf("p" + std::to_string(t), "gold")).ok()) ++succeeded;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(succeeded.load(), 160);
}

TEST(ClientTest, AMovedFromClientAnswersFailedPreconditionAndTheNewOneWorks) {
  FakeServer server;
  server.service().grant = Granted;
  Client first = server.NewClient();
  Client second = std::move(first);

  Result<v1::GrantResponse> stale = first.Grant(GrantOf("p1", "gold"));  // NOLINT(bugprone-use-after-move)
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.error().code, grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(second.Grant(GrantOf("p1", "gold")).ok());
}

TEST(ClientTest, ACancelledTokenStopsACallBeforeItStarts) {
  FakeServer server;
  server.service().check = [](auto*, auto&, auto*) { return grpc::Status::OK; };
  Client client = server.NewClient();
  CallOptions options;
  options.cancellation.emplace();
  options.cancellation->Cancel();

  Result<v1::CheckEntitlementResponse> checked = client.CheckEntitlement(v1::CheckEntitlementRequest(), options);
  ASSERT_FALSE(checked.ok());
  EXPECT_TRUE(checked.error().cancelled());
  EXPECT_TRUE(server.service().calls().empty());
}

}  // namespace
}  // namespace entitlements
