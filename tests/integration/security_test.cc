// Issue 10 over real processes: kvidx-ingest and kvidx-query with TLS on the router listener,
// the admin unix socket and admin over mutual TLS, certificates made by openssl in the test
// (make_certs.sh). Admin calls on the router listener are refused; the unix socket serves them;
// over TCP only an allowed client certificate may call; a client without the CA fails the
// handshake; SIGHUP makes the listeners take new certificate files.
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"

#include <grpcpp/grpcpp.h>

#include "control/control_area.h"
#include "index/segment.h"
#include "kvidx.grpc.pb.h"
#include "tests/integration/process.h"

namespace kvidx::testing {
namespace {

using v1::KvIndex;

struct Env {
  std::string dir, certs, segment, config, admin_socket;
  int router_port = 0, admin_port = 0;
  std::unique_ptr<Process> worker, query;
};
Env* env = nullptr;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void CopyFile(const std::string& from, const std::string& to) {
  std::ofstream(to + ".tmp") << Slurp(from);
  std::rename((to + ".tmp").c_str(), to.c_str());
}

// A channel to 127.0.0.1:`port` trusting CA `ca` ("" = plaintext), presenting client
// certificate `client` ("" = none).
std::unique_ptr<KvIndex::Stub> Stub(int port, const std::string& ca,
                                    const std::string& client = "") {
  std::string target = "127.0.0.1:" + std::to_string(port);
  if (ca.empty())
    return KvIndex::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = Slurp(env->certs + "/" + ca + ".pem");
  if (!client.empty()) {
    tls.pem_cert_chain = Slurp(env->certs + "/" + client + ".pem");
    tls.pem_private_key = Slurp(env->certs + "/" + client + ".key");
  }
  grpc::ChannelArguments args;
  args.SetInt("grpc.use_local_subchannel_pool", 1);  // a fresh connection per stub
  return KvIndex::NewStub(grpc::CreateCustomChannel(target, grpc::SslCredentials(tls), args));
}

grpc::Status Ping(KvIndex::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::PingResponse r;
  return stub.Ping(&ctx, {}, &r);
}

grpc::Status ClearPod(KvIndex::Stub& stub, const std::string& pod) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ClearRequest req;
  req.mutable_pod()->set_pod(pod);
  v1::ClearResponse r;
  return stub.Clear(&ctx, req, &r);
}

std::string Reason(const grpc::Status& st) {
  v1::ErrorDetail d;
  d.ParseFromString(st.error_details());
  return d.reason();
}

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    env = new Env;
    env->dir = "/tmp/kvidx-security-" + std::to_string(getpid());
    env->certs = env->dir + "/certs";
    mkdir(env->dir.c_str(), 0755);
    {
      Process certs(
          {"/bin/bash", std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/make_certs.sh",
           env->certs},
          env->dir + "/certs.log");
      int st = certs.Wait(std::chrono::milliseconds(60000));
      ASSERT_TRUE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << certs.Log();
    }
    CopyFile(env->certs + "/server1.pem", env->dir + "/server.pem");
    CopyFile(env->certs + "/server1.key", env->dir + "/server.key");
    env->segment = "kvidx-security-" + std::to_string(getpid());
    index::Segment::Remove(env->segment);
    control::ControlArea::Remove(control::ControlName(env->segment));
    env->admin_socket = env->dir + "/admin.sock";
    env->config = env->dir + "/kvidx.toml";
    std::ofstream(env->config)
        << "[segment]\nname = \"" << env->segment
        << "\"\nblocks = 10000\npairs = 40000\npublishers = 16\nnamespaces = 4\nstripes = 16\n"
        << "[ingest]\nworkers = 1\n"
        << "[query]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"off\"\n"
        << "admin_listen = \"unix:" << env->admin_socket << "\"\n"
        << "admin_tcp_listen = \"127.0.0.1:0\"\nadmin_allowed_clients = [\"operator\"]\n"
        << "[tls]\ncert = \"" << env->dir << "/server.pem\"\nkey = \"" << env->dir
        << "/server.key\"\nclient_ca = \"" << env->certs << "/ca1.pem\"\n"
        << "[[model]]\nname = \"m\"\nblock_size = 16\n";
    env->worker = std::make_unique<Process>(
        std::vector<std::string>{BuildPath("ingest/kvidx-ingest"), "--config", env->config,
                                 "--worker", "0"},
        env->dir + "/worker.log");
    env->query = std::make_unique<Process>(
        std::vector<std::string>{BuildPath("query/kvidx-query"), "--config", env->config,
                                 "--port-file", env->dir + "/query.port"},
        env->dir + "/query.log");
    std::string ports = WaitForFile(env->dir + "/query.port", std::chrono::milliseconds(30000));
    ASSERT_FALSE(ports.empty()) << env->query->Log() << env->worker->Log();
    int metrics = 0;
    std::istringstream(ports) >> env->router_port >> metrics >> env->admin_port;
    ASSERT_GT(env->router_port, 0);
    ASSERT_GT(env->admin_port, 0);
  }
  static void TearDownTestSuite() {
    for (auto* p : {env->query.get(), env->worker.get()})
      if (p != nullptr) p->Signal(SIGTERM);
    for (auto* p : {env->query.get(), env->worker.get()})
      if (p != nullptr && p->Wait(std::chrono::milliseconds(10000)) < 0) p->Signal(SIGKILL);
    index::Segment::Remove(env->segment);
    control::ControlArea::Remove(control::ControlName(env->segment));
    delete env;
  }
};

TEST_F(SecurityTest, RouterListenerSpeaksTlsAndRefusesAdminCalls) {
  ASSERT_TRUE(Ping(*Stub(env->router_port, "ca1")).ok());
  // Plaintext, or TLS without the CA that signed the server's certificate: no handshake.
  EXPECT_FALSE(Ping(*Stub(env->router_port, "")).ok());
  grpc::Status no_ca = Ping(*Stub(env->router_port, "ca2"));
  EXPECT_EQ(no_ca.error_code(), grpc::StatusCode::UNAVAILABLE) << no_ca.error_message();
  grpc::Status admin = ClearPod(*Stub(env->router_port, "ca1"), "nobody");
  EXPECT_EQ(admin.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Reason(admin), "ADMIN_ONLY");
}

TEST_F(SecurityTest, AdminOverTcpNeedsAnAllowedClientCertificate) {
  // No client certificate: the handshake fails (mutual TLS is required).
  grpc::Status anonymous = Ping(*Stub(env->admin_port, "ca1"));
  EXPECT_EQ(anonymous.error_code(), grpc::StatusCode::UNAVAILABLE) << anonymous.error_message();
  // A certificate of the right CA whose name is not allowed: refused with the reason.
  grpc::Status intruder = ClearPod(*Stub(env->admin_port, "ca1", "intruder"), "nobody");
  EXPECT_EQ(intruder.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Reason(intruder), "CLIENT_NOT_ALLOWED");
  EXPECT_NE(intruder.error_message().find("intruder"), std::string::npos);
  // The allowed operator registers a publisher (the worker executes it) and clears it.
  auto op = Stub(env->admin_port, "ca1", "operator");
  {
    grpc::ClientContext ctx;
    v1::RegisterPublisherRequest reg;
    reg.set_pod("registered-by-operator");
    reg.set_model("m");
    reg.set_endpoint("tcp://127.0.0.1:9");
    v1::Pod pod;
    grpc::Status st = op->RegisterPublisher(&ctx, reg, &pod);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_TRUE(ClearPod(*op, "registered-by-operator").ok());
  // kvidxctl with the operator's certificate.
  Process ctl(
      {BuildPath("tools/kvidxctl"), "--server", "127.0.0.1:" + std::to_string(env->admin_port),
       "--tls-ca", env->certs + "/ca1.pem", "--tls-cert", env->certs + "/operator.pem", "--tls-key",
       env->certs + "/operator.key", "pods"},
      env->dir + "/ctl-tls.log");
  int st = ctl.Wait(std::chrono::milliseconds(20000));
  EXPECT_TRUE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << ctl.Log();
  EXPECT_NE(ctl.Log().find("registered-by-operator"), std::string::npos) << ctl.Log();
}

TEST_F(SecurityTest, TheUnixSocketServesAdminCalls) {
  struct stat st {};
  ASSERT_EQ(stat(env->admin_socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  auto stub = KvIndex::NewStub(
      grpc::CreateChannel("unix:" + env->admin_socket, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::UnregisterPublisherRequest un;
  un.set_pod("registered-by-operator");
  v1::UnregisterPublisherResponse r;
  grpc::Status s = stub->UnregisterPublisher(&ctx, un, &r);
  EXPECT_TRUE(s.ok()) << s.error_message();
}

// Last: it changes the server's certificate.
TEST_F(SecurityTest, SighupReloadsTheCertificateFiles) {
  CopyFile(env->certs + "/server2.pem", env->dir + "/server.pem");
  CopyFile(env->certs + "/server2.key", env->dir + "/server.key");
  env->query->Signal(SIGHUP);
  const std::string router = "tls reloaded on 127.0.0.1:" + std::to_string(env->router_port);
  const std::string admin = "tls reloaded on 127.0.0.1:" + std::to_string(env->admin_port);
  ASSERT_TRUE(WaitFor(
      [&] {
        std::string log = env->query->Log();
        return log.find(router) != std::string::npos && log.find(admin) != std::string::npos;
      },
      std::chrono::milliseconds(20000)))
      << env->query->Log();
  // The same ports now present the certificate of the second CA.
  EXPECT_TRUE(Ping(*Stub(env->router_port, "ca2")).ok());
  EXPECT_EQ(Ping(*Stub(env->router_port, "ca1")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(Ping(*Stub(env->admin_port, "ca2", "operator")).ok());
  // A reload whose files cannot be read keeps the listener and says so.
  std::remove((env->dir + "/server.key").c_str());
  env->query->Signal(SIGHUP);
  ASSERT_TRUE(WaitFor(
      [&] { return env->query->Log().find("keeping the old certificates") != std::string::npos; },
      std::chrono::milliseconds(20000)))
      << env->query->Log();
  EXPECT_TRUE(Ping(*Stub(env->router_port, "ca2")).ok());
  EXPECT_TRUE(env->query->running());
}

}  // namespace
}  // namespace kvidx::testing
