// TLS and mTLS against the fake service, with a CA, server and client certificates made by openssl per run.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "fake_service.h"

namespace entitlements {
namespace {

using testing::FakeServer;
namespace fs = std::filesystem;

std::string ReadText(const fs::path& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A throwaway PKI: ca.pem, server.pem/key (for "entitlements.test"), client.pem/key (client auth).
class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("entitlements-tls-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    const std::string d = dir_.string();
    std::ofstream(dir_ / "server.ext") << "subjectAltName=DNS:entitlements.test\n";
    std::ofstream(dir_ / "client.ext") << "extendedKeyUsage=clientAuth\n";
    const std::string key = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    const std::string quiet = " 2>/dev/null";
    std::string script =
        std::string(OPENSSL_BINARY) + " req -x509" + key + " -keyout " + d + "/ca.key -out " + d +
        "/ca.pem -days 1 -subj /CN=test-ca" + quiet;
    for (const char* name : {"server", "client"}) {
      const std::string n = d + "/" + name;
      script += " && " OPENSSL_BINARY " req" + key + " -keyout " + n + ".key -out " + n + ".csr -subj /CN=" +
                (std::string(name) == "server" ? "entitlements.test" : "game-server") + quiet;
      script += " && " OPENSSL_BINARY " x509 -req -in " + n + ".csr -CA " + d + "/ca.pem -CAkey " + d +
                "/ca.key -CAcreateserial -days 1 -out " + n + ".pem -extfile " + n + ".ext" + quiet;
    }
    ready_ = std::system(script.c_str()) == 0;
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  void SetUp() override {
    if (!ready_) GTEST_FAIL() << "openssl could not make the test certificates (is the openssl package installed?)";
  }

  static std::shared_ptr<grpc::ServerCredentials> ServerCredentials(bool require_client_cert) {
    grpc::SslServerCredentialsOptions options(require_client_cert
                                                  ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                                  : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    options.pem_root_certs = ReadText(dir_ / "ca.pem");
    options.pem_key_cert_pairs.push_back({ReadText(dir_ / "server.key"), ReadText(dir_ / "server.pem")});
    return grpc::SslServerCredentials(options);
  }

  static ClientOptions OptionsFor(const FakeServer& server, bool with_client_cert, const std::string& name) {
    ClientOptions options = server.Options();
    options.retry = RetryPolicy::NoRetries();
    options.default_timeout = std::chrono::seconds(3);
    Result<TlsOptions> tls = TlsOptions::FromFiles((dir_ / "ca.pem").string(),
                                                   with_client_cert ? (dir_ / "client.pem").string() : "",
                                                   with_client_cert ? (dir_ / "client.key").string() : "", name);
    EXPECT_TRUE(tls.ok());
    options.tls = *tls;
    return options;
  }

  static inline fs::path dir_;
  static inline bool ready_ = false;
};

grpc::Status Checked(grpc::ServerContext*, const v1::CheckEntitlementRequest&, v1::CheckEntitlementResponse* r) {
  r->set_active(true);
  return grpc::Status::OK;
}

TEST_F(TlsTest, MutualTlsWithTheClientCertificateAndAServerNameOverride) {
  FakeServer server(ServerCredentials(true));
  server.service().check = Checked;
  Client client = FakeServer::NewClient(OptionsFor(server, true, "entitlements.test"));

  Result<v1::CheckEntitlementResponse> checked = client.CheckEntitlement(v1::CheckEntitlementRequest());
  ASSERT_TRUE(checked.ok()) << checked.error();
  EXPECT_TRUE(checked->active());
  EXPECT_EQ(server.service().calls().at(0).authorization, "Bearer test-key");
}

TEST_F(TlsTest, AServerThatRequiresAClientCertificateRefusesAClientWithout) {
  FakeServer server(ServerCredentials(true));
  server.service().check = Checked;
  Client client = FakeServer::NewClient(OptionsFor(server, false, "entitlements.test"));

  Result<v1::CheckEntitlementResponse> checked = client.CheckEntitlement(v1::CheckEntitlementRequest());
  ASSERT_FALSE(checked.ok());
  EXPECT_EQ(checked.error().code, grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(server.service().calls().empty());
}

TEST_F(TlsTest, ACertificateForAnotherNameIsRefused) {
  FakeServer server(ServerCredentials(false));
  server.service().check = Checked;
  Client client = FakeServer::NewClient(OptionsFor(server, false, "other.test"));

  Result<v1::CheckEntitlementResponse> checked = client.CheckEntitlement(v1::CheckEntitlementRequest());
  ASSERT_FALSE(checked.ok());
  EXPECT_EQ(checked.error().code, grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(server.service().calls().empty());
}

TEST_F(TlsTest, CreateRefusesTextThatIsNotPem) {
  FakeServer server(ServerCredentials(true));
  const std::pair<void (*)(TlsOptions&), const char*> cases[] = {
      {[](TlsOptions& t) { t.root_certs_pem = "/etc/entitlements/ca.pem"; }, "root_certs_pem"},
      {[](TlsOptions& t) { t.client_cert_chain_pem = t.client_private_key_pem; }, "client_cert_chain_pem"},
      {[](TlsOptions& t) { t.client_private_key_pem = t.root_certs_pem; }, "client_private_key_pem"},
  };
  for (const auto& [spoil, field] : cases) {
    ClientOptions options = OptionsFor(server, true, "entitlements.test");
    spoil(*options.tls);
    Result<Client> client = Client::Create(options);
    ASSERT_FALSE(client.ok()) << field;
    EXPECT_TRUE(client.error().invalid_argument());
    EXPECT_NE(client.error().message.find(field), std::string::npos) << client.error();
  }
}

}  // namespace
}  // namespace entitlements
