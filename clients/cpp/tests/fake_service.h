// An in-process EntitlementService on a free loopback port, whose answers each test scripts, and which records
// what reached it (metadata, deadline, request) so tests can check what the client sent.
#pragma once

#include <grpcpp/server.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "entitlements/client.h"
#include "entitlements/v1/entitlements.grpc.pb.h"

namespace entitlements::testing {

// What one call brought to the server.
struct ReceivedCall {
  std::string method;
  std::string authorization;  // empty when the metadata was absent
  std::vector<std::pair<std::string, std::string>> metadata;
  // The time left until the call's deadline when it arrived; unset when the call had none.
  std::optional<std::chrono::milliseconds> deadline_in;
  std::string request;  // the request message in protobuf text format
};

template <typename Request, typename Response>
using UnaryHandler = std::function<grpc::Status(grpc::ServerContext*, const Request&, Response*)>;

class FakeService final : public v1::EntitlementService::Service {
 public:
  // Unset handlers answer UNIMPLEMENTED.
  UnaryHandler<v1::GrantRequest, v1::GrantResponse> grant;
  UnaryHandler<v1::RevokeRequest, v1::RevokeResponse> revoke;
  UnaryHandler<v1::CheckEntitlementRequest, v1::CheckEntitlementResponse> check;
  UnaryHandler<v1::CheckEntitlementsRequest, v1::CheckEntitlementsResponse> check_batch;
  UnaryHandler<v1::ListEntitlementsRequest, v1::ListEntitlementsResponse> list_entitlements;
  UnaryHandler<v1::ListSubscriptionsRequest, v1::ListSubscriptionsResponse> list_subscriptions;
  UnaryHandler<v1::ListLedgerRequest, v1::ListLedgerResponse> list_ledger;
  std::function<grpc::Status(grpc::ServerContext*, const v1::GetOrderStatusRequest&,
                             grpc::ServerWriter<v1::OrderStatusUpdate>*)>
      order_status;

  std::vector<ReceivedCall> calls() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return calls_;
  }

  grpc::Status Grant(grpc::ServerContext* c, const v1::GrantRequest* q, v1::GrantResponse* r) override {
    return Answer("Grant", c, *q, r, grant);
  }
  grpc::Status Revoke(grpc::ServerContext* c, const v1::RevokeRequest* q, v1::RevokeResponse* r) override {
    return Answer("Revoke", c, *q, r, revoke);
  }
  grpc::Status CheckEntitlement(grpc::ServerContext* c, const v1::CheckEntitlementRequest* q,
                                v1::CheckEntitlementResponse* r) override {
    return Answer("CheckEntitlement", c, *q, r, check);
  }
  grpc::Status CheckEntitlements(grpc::ServerContext* c, const v1::CheckEntitlementsRequest* q,
                                 v1::CheckEntitlementsResponse* r) override {
    return Answer("CheckEntitlements", c, *q, r, check_batch);
  }
  grpc::Status ListEntitlements(grpc::ServerContext* c, const v1::ListEntitlementsRequest* q,
                                v1::ListEntitlementsResponse* r) override {
    return Answer("ListEntitlements", c, *q, r, list_entitlements);
  }
  grpc::Status ListSubscriptions(grpc::ServerContext* c, const v1::ListSubscriptionsRequest* q,
                                 v1::ListSubscriptionsResponse* r) override {
    return Answer("ListSubscriptions", c, *q, r, list_subscriptions);
  }
  grpc::Status ListLedger(grpc::ServerContext* c, const v1::ListLedgerRequest* q,
                          v1::ListLedgerResponse* r) override {
    return Answer("ListLedger", c, *q, r, list_ledger);
  }
  grpc::Status GetOrderStatus(grpc::ServerContext* c, const v1::GetOrderStatusRequest* q,
                              grpc::ServerWriter<v1::OrderStatusUpdate>* writer) override {
    Record("GetOrderStatus", c, *q);
    if (!order_status) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "not scripted");
    return order_status(c, *q, writer);
  }

 private:
  template <typename Request, typename Response>
  grpc::Status Answer(const char* method, grpc::ServerContext* context, const Request& request, Response* response,
                      const UnaryHandler<Request, Response>& handler) {
    Record(method, context, request);
    if (!handler) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "not scripted");
    return handler(context, request, response);
  }

  void Record(const char* method, grpc::ServerContext* context, const google::protobuf::Message& request) {
    ReceivedCall call;
    call.method = method;
    for (const auto& [key, value] : context->client_metadata()) {
      std::string k(key.data(), key.size()), v(value.data(), value.size());
      if (k == "authorization") call.authorization = v;
      call.metadata.emplace_back(k, v);
    }
    auto deadline = context->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      call.deadline_in =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::system_clock::now());
    }
    call.request = request.ShortDebugString();
    std::lock_guard<std::mutex> lock(mutex_);
    calls_.push_back(std::move(call));
  }

  mutable std::mutex mutex_;
  std::vector<ReceivedCall> calls_;
};

// The fake service, served on 127.0.0.1 at a port the OS picked.
class FakeServer {
 public:
  explicit FakeServer(std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials()) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", credentials, &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
  }
  ~FakeServer() { Shutdown(); }

  void Shutdown() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    server_.reset();
  }

  FakeService& service() { return service_; }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }

  // Options for a client of this server: plaintext, the API key "test-key", fast retries.
  ClientOptions Options() const {
    ClientOptions options;
    options.target = target();
    options.api_key = "test-key";
    options.retry.initial_backoff = std::chrono::milliseconds(10);
    options.retry.max_backoff = std::chrono::milliseconds(50);
    return options;
  }

  Client NewClient() const { return NewClient(Options()); }
  static Client NewClient(ClientOptions options) {
    Result<Client> client = Client::Create(std::move(options));
    if (!client) std::abort();
    return std::move(client).value();
  }

 private:
  FakeService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace entitlements::testing
