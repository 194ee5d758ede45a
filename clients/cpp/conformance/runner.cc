// The C++ client's conformance runner: reads the harness's JSON lines on stdin, maps each op onto the public API
// of entitlements::Client, and writes one JSON line per event and answer on stdout (conformance/PROTOCOL.md).
// All scenario logic lives in the harness; this program only translates.
#include <google/protobuf/util/json_util.h>

#include <chrono>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "entitlements/client.h"

namespace {

using nlohmann::json;
namespace v1 = entitlements::v1;

// A request the runner could not map onto the client (not a failure of the client): code "RUNNER".
struct RunnerError {
  std::string message;
};

void Emit(const json& line) { std::cout << line.dump() << '\n' << std::flush; }

json ToJson(const google::protobuf::Message& message) {
  std::string text;
  auto status = google::protobuf::util::MessageToJsonString(message, &text);
  if (!status.ok()) throw RunnerError{"cannot print " + message.GetTypeName() + ": " + status.ToString()};
  return json::parse(text);
}

// The args object as a request message: proto field names and proto3 JSON values, as the protocol says.
template <typename Request>
Request RequestFrom(const json& args) {
  Request request;
  auto status = google::protobuf::util::JsonStringToMessage(args.dump(), &request);
  if (!status.ok()) throw RunnerError{"args are not a " + request.GetTypeName() + ": " + status.ToString()};
  return request;
}

// The answer to a request the runner itself could not carry out.
json RunnerFailure(const json& id, const std::string& message) {
  return {{"id", id}, {"ok", false}, {"error", {{"code", "RUNNER"}, {"message", message}, {"type", "runner"}}}};
}

json ErrorJson(const entitlements::Error& error) {
  return {{"code", std::string(error.code_name())}, {"message", error.message}, {"type", "entitlements::Error"}};
}

std::int64_t IntArg(const json& args, const char* name, std::int64_t fallback) {
  if (!args.contains(name) || args[name].is_null()) return fallback;
  const json& value = args[name];
  if (value.is_number_integer()) return value.get<std::int64_t>();
  if (value.is_string()) return std::stoll(value.get<std::string>());
  throw RunnerError{std::string(name) + ": not an integer"};
}

std::string StringArg(const json& args, const char* name) {
  if (!args.contains(name) || args[name].is_null()) return {};
  if (!args[name].is_string()) throw RunnerError{std::string(name) + ": not a string"};
  return args[name].get<std::string>();
}

class Runner {
 public:
  // Answers one request line (events first, for streams).
  void Handle(const json& request) {
    const json id = request.value("id", json());
    try {
      const std::string op = request.value("op", "");
      const json args = request.contains("args") && request["args"].is_object() ? request["args"] : json::object();
      if (op == "connect") return Answer(id, Connect(args));
      if (op == "close") {
        clients_.erase(request.value("client", args.value("name", "")));
        return Answer(id, entitlements::Result<json>(json::object()));
      }
      const entitlements::Client& client = ClientNamed(request.value("client", ""));
      if (op == "grant") return Answer(id, Unary(client.Grant(RequestFrom<v1::GrantRequest>(args))));
      if (op == "revoke") return Answer(id, Unary(client.Revoke(RequestFrom<v1::RevokeRequest>(args))));
      if (op == "check") {
        return Answer(id, Unary(client.CheckEntitlement(RequestFrom<v1::CheckEntitlementRequest>(args))));
      }
      if (op == "check_entitlements") {
        return Answer(id, Unary(client.CheckEntitlements(RequestFrom<v1::CheckEntitlementsRequest>(args))));
      }
      if (op == "list_entitlements") {
        return Answer(id, Unary(client.ListEntitlements(RequestFrom<v1::ListEntitlementsRequest>(args))));
      }
      if (op == "list_all_entitlements") return Answer(id, ListAll(client, args));
      if (op == "list_subscriptions") {
        return Answer(id, Unary(client.ListSubscriptions(RequestFrom<v1::ListSubscriptionsRequest>(args))));
      }
      if (op == "list_ledger") return Answer(id, Unary(client.ListLedger(RequestFrom<v1::ListLedgerRequest>(args))));
      if (op == "get_order_status" || op == "follow_order") return Answer(id, Stream(client, id, op, args));
      throw RunnerError{"unknown op " + op};
    } catch (const RunnerError& error) {
      Emit(RunnerFailure(id, error.message));
    } catch (const std::exception& error) {
      Emit(RunnerFailure(id, error.what()));
    }
  }

  void CloseAll() { clients_.clear(); }

 private:
  static void Answer(const json& id, const entitlements::Result<json>& result) {
    if (result.ok()) {
      Emit({{"id", id}, {"ok", true}, {"result", *result}});
    } else {
      Emit({{"id", id}, {"ok", false}, {"error", ErrorJson(result.error())}});
    }
  }

  template <typename Response>
  static entitlements::Result<json> Unary(const entitlements::Result<Response>& result) {
    if (!result.ok()) return result.error();
    return ToJson(*result);
  }

  entitlements::Result<json> Connect(const json& args) {
    entitlements::ClientOptions options;
    const std::string name = StringArg(args, "name");
    options.target = StringArg(args, "target");
    options.api_key = StringArg(args, "api_key");
    options.project_id = IntArg(args, "project_id", 0);
    options.default_timeout = std::chrono::milliseconds(IntArg(args, "timeout_ms", 5000));
    if (args.contains("tls") && args["tls"].is_object()) {
      const json& tls = args["tls"];
      auto files = entitlements::TlsOptions::FromFiles(StringArg(tls, "ca_file"), StringArg(tls, "cert_file"),
                                                       StringArg(tls, "key_file"), StringArg(tls, "server_name"));
      if (!files.ok()) return files.error();
      options.tls = *files;
    }
    if (args.contains("retry") && args["retry"].is_object()) {
      const json& retry = args["retry"];
      options.retry.max_attempts = static_cast<int>(IntArg(retry, "max_attempts", options.retry.max_attempts));
      options.retry.initial_backoff =
          std::chrono::milliseconds(IntArg(retry, "initial_backoff_ms", options.retry.initial_backoff.count()));
      options.retry.max_backoff =
          std::chrono::milliseconds(IntArg(retry, "max_backoff_ms", options.retry.max_backoff.count()));
    }
    entitlements::Result<entitlements::Client> client = entitlements::Client::Create(std::move(options));
    if (!client.ok()) return client.error();
    clients_.erase(name);
    clients_.emplace(name, std::move(client).value());
    return json::object();
  }

  const entitlements::Client& ClientNamed(const std::string& name) const {
    auto found = clients_.find(name);
    if (found == clients_.end()) throw RunnerError{"no connection named \"" + name + "\""};
    return found->second;
  }

  static entitlements::Result<json> ListAll(const entitlements::Client& client, const json& args) {
    v1::ListEntitlementsResponse all;
    auto listed = client.ForEachEntitlement(RequestFrom<v1::ListEntitlementsRequest>(args),
                                            [&](const v1::Entitlement& entitlement) {
                                              *all.add_entitlements() = entitlement;
                                              return true;
                                            });
    if (!listed.ok()) return listed.error();
    json result = ToJson(all);
    if (!result.contains("entitlements")) result["entitlements"] = json::array();
    return result;
  }

  static entitlements::Result<json> Stream(const entitlements::Client& client, const json& id, const std::string& op,
                                           const json& args) {
    auto request = RequestFrom<v1::GetOrderStatusRequest>(args);
    json updates = json::array();
    auto on_update = [&](const v1::OrderStatusUpdate& update) {
      json event = ToJson(update);
      Emit({{"id", id}, {"event", event}});
      updates.push_back(std::move(event));
      return true;  // to the end of the stream: the harness decides what it expects
    };
    if (op == "get_order_status") {
      entitlements::Result<void> ended = client.GetOrderStatus(request, on_update);
      if (!ended.ok()) return ended.error();
      return json{{"updates", updates}};
    }
    auto followed = client.FollowOrder(request, on_update);
    if (!followed.ok()) return followed.error();
    return json{{"updates", updates}, {"opens", followed->opens}};
  }

  std::map<std::string, entitlements::Client> clients_;
};

}  // namespace

int main() {
  std::ios::sync_with_stdio(false);
  Emit({{"ready", true}, {"client", "cpp"}});
  Runner runner;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json request;
    try {
      request = json::parse(line);
    } catch (const json::exception& error) {
      Emit(RunnerFailure(nullptr, error.what()));
      continue;
    }
    if (!request.is_object()) {
      Emit(RunnerFailure(nullptr, "not a JSON object"));
      continue;
    }
    if (request.contains("op") && request["op"] == "exit") break;
    runner.Handle(request);
  }
  runner.CloseAll();
  return 0;
}
