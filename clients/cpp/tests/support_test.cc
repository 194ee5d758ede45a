// The pieces around the calls: Result, Error, idempotency keys, backoff, the order update filter, and the options
// Client::Create refuses.
#include <gtest/gtest.h>

#include <set>

#include "backoff.h"
#include "entitlements/client.h"
#include "order_filter.h"

namespace entitlements {
namespace {

using namespace std::chrono_literals;

TEST(ResultTest, HoldsAValueOrAnError) {
  Result<int> value = 7;
  ASSERT_TRUE(value.ok());
  EXPECT_EQ(*value, 7);
  EXPECT_EQ(value.value_or(1), 7);

  Result<int> failed = Error{grpc::StatusCode::NOT_FOUND, "no such order"};
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(failed.value_or(1), 1);

  Result<void> done;
  EXPECT_TRUE(done.ok());
  Result<void> not_done = Error{grpc::StatusCode::CANCELLED, "stop"};
  EXPECT_EQ(not_done.error().message, "stop");
}

TEST(ResultDeathTest, ReadingTheValueOfAFailedResultAbortsWithTheError) {
  Result<int> failed = Error{grpc::StatusCode::UNAVAILABLE, "store unreachable"};
  EXPECT_DEATH((void)failed.value(), "UNAVAILABLE: store unreachable");
  Result<int> value = 1;
  EXPECT_DEATH((void)value.error(), "error of a successful result");
}

TEST(ErrorTest, NamesEveryCanonicalCode) {
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::DATA_LOSS), "DATA_LOSS");
  EXPECT_EQ(StatusCodeName(static_cast<grpc::StatusCode>(99)), "UNKNOWN");
  EXPECT_EQ((Error{grpc::StatusCode::ABORTED, ""}).ToString(), "ABORTED");
}

TEST(IdempotencyKeyTest, KeysAreUuidV4AndDoNotRepeat) {
  std::set<std::string> keys;
  for (int i = 0; i < 10000; ++i) {
    std::string key = NewIdempotencyKey();
    ASSERT_EQ(key.size(), 36u);
    ASSERT_EQ(key[14], '4');
    ASSERT_NE(std::string("89ab").find(key[19]), std::string::npos);
    keys.insert(key);
  }
  EXPECT_EQ(keys.size(), 10000u);
}

TEST(BackoffTest, DoublesFromTheInitialWaitUpToTheMaximumWithJitterInTheUpperHalf) {
  RetryPolicy policy;  // 100 ms doubling to 2 s
  internal::Backoff backoff(policy);
  EXPECT_EQ(backoff.Bound(0), 100ms);
  EXPECT_EQ(backoff.Bound(1), 200ms);
  EXPECT_EQ(backoff.Bound(4), 1600ms);
  EXPECT_EQ(backoff.Bound(5), 2000ms);
  EXPECT_EQ(backoff.Bound(30), 2000ms);
  for (int attempt = 0; attempt < 8; ++attempt) {
    auto wait = backoff.Next();
    EXPECT_GE(wait, backoff.Bound(attempt) / 2);
    EXPECT_LE(wait, backoff.Bound(attempt));
  }
  backoff.Reset();
  EXPECT_LE(backoff.Next(), 100ms);
}

TEST(OrderUpdateFilterTest, AdmitsForwardStatusesGrantsAndTimeOutsOnly) {
  internal::OrderUpdateFilter filter;
  auto update = [](v1::OrderStatus status, bool granted = false, bool timed_out = false) {
    v1::OrderStatusUpdate u;
    u.set_status(status);
    u.set_entitlements_granted(granted);
    u.set_timed_out(timed_out);
    return u;
  };
  EXPECT_TRUE(filter.Admit(update(v1::ORDER_STATUS_PAID)));
  EXPECT_FALSE(filter.Admit(update(v1::ORDER_STATUS_PAID)));
  EXPECT_FALSE(filter.Admit(update(v1::ORDER_STATUS_NEW)));
  EXPECT_TRUE(filter.Admit(update(v1::ORDER_STATUS_PAID, true)));
  EXPECT_FALSE(filter.Admit(update(v1::ORDER_STATUS_PAID, true)));
  EXPECT_TRUE(filter.Admit(update(v1::ORDER_STATUS_DONE, true)));
  EXPECT_FALSE(filter.Admit(update(v1::ORDER_STATUS_DONE, true)));
  EXPECT_TRUE(filter.Admit(update(v1::ORDER_STATUS_DONE, true, true)));
}

TEST(OptionsTest, ServiceConfigCarriesTheRetryPolicy) {
  RetryPolicy policy;
  policy.max_attempts = 4;
  policy.initial_backoff = 50ms;
  policy.max_backoff = 1500ms;
  policy.retryable_codes = {grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::RESOURCE_EXHAUSTED};
  EXPECT_EQ(policy.ServiceConfigJson(),
            R"({"methodConfig":[{"name":[{"service":"entitlements.v1.EntitlementService"}],"retryPolicy":)"
            R"({"maxAttempts":4,"initialBackoff":"0.050s","maxBackoff":"1.500s","backoffMultiplier":2,)"
            R"("retryableStatusCodes":["UNAVAILABLE","RESOURCE_EXHAUSTED"]}}]})");
}

TEST(OptionsTest, CreateRefusesOptionsOutOfRangeNamingThem) {
  auto refused = [](auto change) {
    ClientOptions options;
    options.target = "localhost:50051";
    change(options);
    Result<Client> client = Client::Create(options);
    EXPECT_FALSE(client.ok());
    if (client.ok()) return std::string();
    EXPECT_TRUE(client.error().invalid_argument());
    return client.error().message;
  };
  EXPECT_NE(refused([](ClientOptions& o) { o.target.clear(); }).find("target"), std::string::npos);
  EXPECT_NE(refused([](ClientOptions& o) { o.api_key = "key\n"; }).find("api_key"), std::string::npos);
  EXPECT_NE(refused([](ClientOptions& o) { o.default_timeout = 0ms; }).find("default_timeout"), std::string::npos);
  EXPECT_NE(refused([](ClientOptions& o) { o.project_id = -1; }).find("project_id"), std::string::npos);
  EXPECT_NE(refused([](ClientOptions& o) { o.retry.max_attempts = 6; }).find("max_attempts"), std::string::npos);
  EXPECT_NE(refused([](ClientOptions& o) { o.retry.retryable_codes.clear(); }).find("retryable_codes"),
            std::string::npos);
  EXPECT_NE(refused([](ClientOptions& o) {
              o.tls = TlsOptions{};
              o.tls->client_cert_chain_pem = "-----BEGIN CERTIFICATE-----";
            }).find("mTLS"),
            std::string::npos);
}

TEST(OptionsTest, TlsFromFilesNamesAFileItCannotRead) {
  Result<TlsOptions> tls = TlsOptions::FromFiles("/nonexistent/ca.pem");
  ASSERT_FALSE(tls.ok());
  EXPECT_TRUE(tls.error().invalid_argument());
  EXPECT_NE(tls.error().message.find("/nonexistent/ca.pem"), std::string::npos);
  Result<TlsOptions> none = TlsOptions::FromFiles("", "", "", "entitlements.internal");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->server_name_override, "entitlements.internal");
}

}  // namespace
}  // namespace entitlements
