// GetOrderStatus and FollowOrder against the in-process fake service: updates delivered as they come, streams
// reopened after UNAVAILABLE without repeating a status, max_wait across reopenings, errors, cancellation.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "fake_service.h"

namespace entitlements {
namespace {

using testing::FakeServer;
using namespace std::chrono_literals;
using v1::OrderStatus;

v1::OrderStatusUpdate Update(OrderStatus status, bool granted = false, bool timed_out = false) {
  v1::OrderStatusUpdate update;
  update.set_order_id("o-1");
  update.set_status(status);
  update.set_entitlements_granted(granted);
  update.set_timed_out(timed_out);
  return update;
}

v1::GetOrderStatusRequest OrderRequest(std::chrono::milliseconds max_wait) {
  v1::GetOrderStatusRequest request;
  request.set_order_id("o-1");
  request.set_user_id("p1");
  request.mutable_max_wait()->set_seconds(max_wait.count() / 1000);
  request.mutable_max_wait()->set_nanos(static_cast<int>(max_wait.count() % 1000) * 1000000);
  return request;
}

std::chrono::milliseconds MaxWaitOf(const std::string& request_text) {
  // "max_wait { seconds: 9 nanos: 850000000 }" in the recorded text form.
  v1::GetOrderStatusRequest request;
  auto seconds = request_text.find("seconds: ");
  auto nanos = request_text.find("nanos: ");
  long long s = seconds == std::string::npos ? 0 : std::stoll(request_text.substr(seconds + 9));
  long long n = nanos == std::string::npos ? 0 : std::stoll(request_text.substr(nanos + 7));
  return std::chrono::milliseconds(s * 1000 + n / 1000000);
}

std::vector<OrderStatus> Statuses(const std::vector<v1::OrderStatusUpdate>& updates) {
  std::vector<OrderStatus> statuses;
  for (const auto& update : updates) statuses.push_back(update.status());
  return statuses;
}

TEST(GetOrderStatusTest, DeliversEachMessageAsItArrivesAndEndsOk) {
  FakeServer server;
  server.service().order_status = [](auto*, auto&, grpc::ServerWriter<v1::OrderStatusUpdate>* writer) {
    writer->Write(Update(v1::ORDER_STATUS_NEW));
    writer->Write(Update(v1::ORDER_STATUS_PAID));
    writer->Write(Update(v1::ORDER_STATUS_DONE, true));
    return grpc::Status::OK;
  };
  Client client = server.NewClient();
  std::vector<v1::OrderStatusUpdate> updates;

  Result<void> ended = client.GetOrderStatus(OrderRequest(10s), [&](auto& u) {
    updates.push_back(u);
    return true;
  });
  ASSERT_TRUE(ended.ok()) << ended.error();
  EXPECT_EQ(Statuses(updates),
            (std::vector<OrderStatus>{v1::ORDER_STATUS_NEW, v1::ORDER_STATUS_PAID, v1::ORDER_STATUS_DONE}));
  auto call = server.service().calls().at(0);
  EXPECT_EQ(call.authorization, "Bearer test-key");
  EXPECT_FALSE(call.deadline_in.has_value()) << "order streams have no default deadline";
}

TEST(GetOrderStatusTest, DoesNotReopenABrokenStream) {
  FakeServer server;
  server.service().order_status = [](auto*, auto&, grpc::ServerWriter<v1::OrderStatusUpdate>* writer) {
    writer->Write(Update(v1::ORDER_STATUS_NEW));
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "replica shutting down");
  };
  Client client = server.NewClient();
  int delivered = 0;

  Result<void> ended = client.GetOrderStatus(OrderRequest(10s), [&](auto&) { return ++delivered > 0; });
  ASSERT_FALSE(ended.ok());
  EXPECT_EQ(ended.error().code, grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ended.error().message, "replica shutting down");
  EXPECT_EQ(delivered, 1);
  EXPECT_EQ(server.service().calls().size(), 1u);
}

TEST(GetOrderStatusTest, ACancellationTokenEndsAStreamThatIsWaiting) {
  FakeServer server;
  server.service().order_status = [](grpc::ServerContext* context, auto&,
                                     grpc::ServerWriter<v1::OrderStatusUpdate>* writer) {
    writer->Write(Update(v1::ORDER_STATUS_NEW));
    while (!context->IsCancelled()) std::this_thread::sleep_for(5ms);
    return grpc::Status::CANCELLED;
  };
  Client client = server.NewClient();
  CallOptions options;
  options.cancellation.emplace();
  CancellationToken token = *options.cancellation;

  Result<void> ended = client.GetOrderStatus(OrderRequest(10s), [&](auto&) {
        token.Cancel();
        return true;
      }, options);
  ASSERT_FALSE(ended.ok());
  EXPECT_EQ(ended.error().code, grpc::StatusCode::CANCELLED);
}

TEST(FollowOrderTest, ReopensABrokenStreamAndDeliversEachStatusOnce) {
  FakeServer server;
  std::atomic<int> opens{0};
  server.service().order_status = [&](auto*, auto&, grpc::ServerWriter<v1::OrderStatusUpdate>* writer) {
    switch (++opens) {
      case 1:
        writer->Write(Update(v1::ORDER_STATUS_NEW));
        writer->Write(Update(v1::ORDER_STATUS_PAID));
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "replica shutting down");
      case 2:
        // A new replica starts with the stored state: a repeat, which must not be delivered again.
        writer->Write(Update(v1::ORDER_STATUS_PAID));
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection dropped");
      default:
        writer->Write(Update(v1::ORDER_STATUS_PAID));
        writer->Write(Update(v1::ORDER_STATUS_PAID, true));  // granted: news, same status
        writer->Write(Update(v1::ORDER_STATUS_DONE, true));
        return grpc::Status::OK;
    }
  };
  Client client = server.NewClient();
  std::vector<v1::OrderStatusUpdate> updates;

  Result<FollowOrderSummary> followed = client.FollowOrder(OrderRequest(10s), [&](auto& u) {
    updates.push_back(u);
    return true;
  });
  ASSERT_TRUE(followed.ok()) << followed.error();
  EXPECT_EQ(Statuses(updates), (std::vector<OrderStatus>{v1::ORDER_STATUS_NEW, v1::ORDER_STATUS_PAID,
                                                         v1::ORDER_STATUS_PAID, v1::ORDER_STATUS_DONE}));
  EXPECT_FALSE(updates[1].entitlements_granted());
  EXPECT_TRUE(updates[2].entitlements_granted());
  EXPECT_EQ(followed->opens, 3);
  EXPECT_EQ(followed->delivered, 4);
  ASSERT_TRUE(followed->last.has_value());
  EXPECT_EQ(followed->last->status(), v1::ORDER_STATUS_DONE);

  // Each reopening asks for what is left of max_wait.
  auto calls = server.service().calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(MaxWaitOf(calls[0].request), 10s);
  EXPECT_LT(MaxWaitOf(calls[1].request), 10s);
  EXPECT_GT(MaxWaitOf(calls[1].request), 9s);
  EXPECT_LT(MaxWaitOf(calls[2].request), MaxWaitOf(calls[1].request));
}

TEST(FollowOrderTest, StopsWhenTheCallbackSaysSoAndEndsOk) {
  FakeServer server;
  std::atomic<bool> server_saw_cancel{false};
  server.service().order_status = [&](grpc::ServerContext* context, auto&,
                                      grpc::ServerWriter<v1::OrderStatusUpdate>* writer) {
    writer->Write(Update(v1::ORDER_STATUS_PAID));
    writer->Write(Update(v1::ORDER_STATUS_PAID, true));
    // Xsolla's DONE may come much later: the caller stops before it.
    while (!context->IsCancelled()) std::this_thread::sleep_for(5ms);
    server_saw_cancel = true;
    return grpc::Status::CANCELLED;
  };
  Client client = server.NewClient();
  std::vector<v1::OrderStatusUpdate> updates;

  auto followed = client.FollowOrder(OrderRequest(10s), [&](const v1::OrderStatusUpdate& u) {
    updates.push_back(u);
    return !u.entitlements_granted();
  });
  ASSERT_TRUE(followed.ok()) << followed.error();
  EXPECT_EQ(updates.size(), 2u);
  EXPECT_EQ(followed->opens, 1);
  EXPECT_TRUE(followed->last->entitlements_granted());
  for (int i = 0; i < 100 && !server_saw_cancel; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(server_saw_cancel) << "stopping must cancel the call, not leave the stream open";

  int raw = 0;
  Result<void> ended = client.GetOrderStatus(OrderRequest(10s), [&](auto&) { return ++raw < 1; });
  ASSERT_TRUE(ended.ok()) << ended.error();
  EXPECT_EQ(raw, 1);
}

TEST(FollowOrderTest, ReopensAStreamTheServerCancelledButNotOneTheCallerCancelled) {
  FakeServer server;
  std::atomic<int> opens{0};
  server.service().order_status = [&](grpc::ServerContext* context, auto&,
                                      grpc::ServerWriter<v1::OrderStatusUpdate>* writer) {
    if (++opens == 1) return grpc::Status(grpc::StatusCode::CANCELLED, "");  // a replica stopping as it opened
    writer->Write(Update(v1::ORDER_STATUS_PAID, true));
    while (!context->IsCancelled()) std::this_thread::sleep_for(5ms);
    return grpc::Status::CANCELLED;
  };
  Client client = server.NewClient();
  CallOptions call;
  call.cancellation.emplace();
  CancellationToken token = *call.cancellation;

  auto followed = client.FollowOrder(OrderRequest(10s), [&](auto&) {
    token.Cancel();  // the caller's own cancellation ends it: no reopening
    return true;
  }, call);
  ASSERT_FALSE(followed.ok());
  EXPECT_TRUE(followed.error().cancelled());
  EXPECT_EQ(opens.load(), 2);
}

TEST(FollowOrderTest, DeliversTheTimedOutMessageEvenWhenItRepeatsTheStatus) {
  FakeServer server;
  server.service().order_status = [](auto*, auto&, grpc::ServerWriter<v1::OrderStatusUpdate>* writer) {
    writer->Write(Update(v1::ORDER_STATUS_NEW));
    writer->Write(Update(v1::ORDER_STATUS_NEW, false, true));
    return grpc::Status::OK;
  };
  Client client = server.NewClient();
  std::vector<v1::OrderStatusUpdate> updates;

  auto followed = client.FollowOrder(OrderRequest(1s), [&](auto& u) {
    updates.push_back(u);
    return true;
  });
  ASSERT_TRUE(followed.ok());
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_TRUE(updates[1].timed_out());
  EXPECT_EQ(followed->opens, 1);
}

TEST(FollowOrderTest, AnyOtherErrorEndsItWithoutReopening) {
  FakeServer server;
  server.service().order_status = [](auto*, auto&, auto*) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "order o-1: Xsolla does not know it");
  };
  Client client = server.NewClient();

  auto followed = client.FollowOrder(OrderRequest(10s), [](auto&) { return true; });
  ASSERT_FALSE(followed.ok());
  EXPECT_EQ(followed.error().code, grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(followed.error().message, "order o-1: Xsolla does not know it");
  EXPECT_EQ(server.service().calls().size(), 1u);
}

TEST(FollowOrderTest, EndsWithTheLastErrorWhenMaxWaitPassesWhileReopening) {
  ClientOptions options;
  options.target = "127.0.0.1:1";  // nothing listens: every open is UNAVAILABLE
  options.retry = RetryPolicy::NoRetries();
  options.retry.initial_backoff = 20ms;
  options.retry.max_backoff = 40ms;
  Client client = FakeServer::NewClient(options);

  auto started = std::chrono::steady_clock::now();
  auto followed = client.FollowOrder(OrderRequest(400ms), [](auto&) {
    ADD_FAILURE() << "nothing to deliver";
    return true;
  });
  auto took = std::chrono::steady_clock::now() - started;
  ASSERT_FALSE(followed.ok());
  EXPECT_EQ(followed.error().code, grpc::StatusCode::UNAVAILABLE);
  EXPECT_LT(took, 1500ms);
  EXPECT_GT(took, 300ms);
}

TEST(FollowOrderTest, ACancellationTokenEndsTheWaitBetweenReopenings) {
  ClientOptions options;
  options.target = "127.0.0.1:1";
  options.retry = RetryPolicy::NoRetries();
  options.retry.initial_backoff = 10s;  // a long wait, cut short by the token
  options.retry.max_backoff = 10s;
  Client client = FakeServer::NewClient(options);
  CallOptions call;
  call.cancellation.emplace();
  CancellationToken token = *call.cancellation;
  std::thread canceller([token] {
    std::this_thread::sleep_for(200ms);
    token.Cancel();
  });

  auto started = std::chrono::steady_clock::now();
  auto followed = client.FollowOrder(OrderRequest(60s), [](auto&) { return true; }, call);
  canceller.join();
  ASSERT_FALSE(followed.ok());
  EXPECT_EQ(followed.error().code, grpc::StatusCode::CANCELLED);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 3s);
}

TEST(FollowOrderTest, TheCallersTimeoutBoundsAllTheReopenings) {
  FakeServer server;
  server.service().order_status = [](auto*, auto&, grpc::ServerWriter<v1::OrderStatusUpdate>* writer) {
    writer->Write(Update(v1::ORDER_STATUS_NEW));
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "replica shutting down");
  };
  Client client = server.NewClient();
  CallOptions call;
  call.timeout = 300ms;

  auto started = std::chrono::steady_clock::now();
  int delivered = 0;
  auto followed = client.FollowOrder(OrderRequest(60s), [&](auto&) { return ++delivered > 0; }, call);
  ASSERT_FALSE(followed.ok());
  EXPECT_EQ(followed.error().code, grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(delivered, 1);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2s);
  EXPECT_GT(server.service().calls().size(), 1u);
}

}  // namespace
}  // namespace entitlements
