// Transport security with real processes: lathed serves TLS from a private
// CA (scripts/make-certs.sh); a client that trusts that CA gets through, one
// without it (or plaintext, or trusting another CA) is refused at the
// handshake. Workers use their own port with mutual TLS: no client
// certificate, or one from another CA, never reaches the worker service.
// Plaintext needs --insecure and logs a warning; bad TLS files stop lathed
// with a message naming the flag.
#include <csignal>
#include <filesystem>
#include <fstream>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lathe/v1/worker.grpc.pb.h"
#include "tests/cluster.h"

namespace lathe::testing {
namespace {

namespace fs = std::filesystem;

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto c = Cluster::Start(TestRoot("tls"), 1);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
    // A second CA that nobody in the cluster trusts.
    std::string out;
    ASSERT_EQ(RunCommand({"bash", std::string(LATHE_SOURCE_DIR) + "/scripts/make-certs.sh",
                          Rogue()},
                         &out),
              0)
        << out;
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  static std::string Rogue() { return cluster_->root() + "/rogue-certs"; }

  // ListModels over `tls` to the public port.
  static absl::Status ListModels(const ChannelTls& tls) {
    auto client = Client::Connect(cluster_->address(), cluster_->api_key(), tls);
    if (!client.ok()) return client.status();
    return (*client)->ListModels().status();
  }

  // A worker RPC (FetchFile with the worker token) to the worker port over
  // `tls`; the code it ends with.
  static grpc::Status FetchAsWorker(const ChannelTls& tls) {
    return FetchAsWorkerAt(cluster_->worker_address(), cluster_->root() + "/data", tls);
  }
  // The same to `target`, with the token of the lathed on `data_dir`.
  static grpc::Status FetchAsWorkerAt(const std::string& target, const std::string& data_dir,
                                      const ChannelTls& tls) {
    auto channel = MakeChannel(target, tls);
    EXPECT_TRUE(channel.ok()) << channel.status();
    auto stub = v1::Worker::NewStub(*channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    ctx.AddMetadata("authorization",
                    "Bearer " + std::string(absl::StripAsciiWhitespace(
                                    ReadFileOrEmpty(data_dir + "/worker.token"))));
    v1::FetchFileRequest r;
    r.set_job_id("ftjob-none");
    r.set_attempt(1);
    r.set_file_id("file-none");
    auto reader = stub->FetchFile(&ctx, r);
    v1::FileChunk chunk;
    while (reader->Read(&chunk)) {
    }
    return reader->Finish();
  }

  static Cluster* cluster_;
};

Cluster* TlsTest::cluster_ = nullptr;

TEST_F(TlsTest, ClientWithTheServersCaConnects) {
  EXPECT_TRUE(ListModels(cluster_->client_tls()).ok());
  // The worker (mutual TLS on its own port) trains a job end to end.
  auto file = cluster_->client().UploadFile(cluster_->demo_dir() + "/train.jsonl",
                                            "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  v1::CreateJobRequest req;
  req.set_model("lathe-demo");
  req.set_training_file(file->id());
  req.mutable_method()->mutable_supervised()->mutable_hyperparameters()->set_n_epochs(1);
  auto job = cluster_->client().CreateJob(req);
  ASSERT_TRUE(job.ok()) << job.status();
  absl::Time deadline = absl::Now() + absl::Seconds(120);
  v1::JobStatus status = v1::JOB_STATUS_UNSPECIFIED;
  while (absl::Now() < deadline) {
    auto j = cluster_->client().GetJob(job->id());
    ASSERT_TRUE(j.ok());
    status = j->status();
    if (status == v1::JOB_STATUS_SUCCEEDED || status == v1::JOB_STATUS_FAILED) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_EQ(status, v1::JOB_STATUS_SUCCEEDED) << cluster_->Logs();
}

TEST_F(TlsTest, ClientWithoutTheCaIsRefused) {
  ChannelTls system_roots;  // TLS, trusting only the system's CAs
  absl::Status st = ListModels(system_roots);
  EXPECT_TRUE(absl::IsUnavailable(st)) << st;

  ChannelTls other_ca;
  other_ca.ca_file = Rogue() + "/ca.pem";
  st = ListModels(other_ca);
  EXPECT_TRUE(absl::IsUnavailable(st)) << st;

  ChannelTls plaintext;
  plaintext.insecure = true;
  st = ListModels(plaintext);
  EXPECT_TRUE(absl::IsUnavailable(st)) << st;

  // The right CA but the wrong expected name.
  ChannelTls wrong_name = cluster_->client_tls();
  wrong_name.server_name = "not-lathed.example";
  st = ListModels(wrong_name);
  EXPECT_TRUE(absl::IsUnavailable(st)) << st;
}

TEST_F(TlsTest, CliNamesTheMissingCa) {
  std::string out;
  int rc = RunCommand({Binaries().cli, "--server", cluster_->address(), "--api_key",
                       cluster_->api_key(), "models", "list"},
                      &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_TRUE(absl::StrContains(out, "--ca_cert")) << out;
  std::vector<std::string> ok = {Binaries().cli, "--server", cluster_->address(),
                                 "--api_key", cluster_->api_key(), "models", "list"};
  for (const std::string& f : cluster_->CliTlsFlags()) ok.push_back(f);
  rc = RunCommand(ok, &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "lathe-demo")) << out;
  // A CA file that is not PEM is named before anything is sent.
  rc = RunCommand({Binaries().cli, "--server", cluster_->address(), "--ca_cert",
                   cluster_->demo_dir() + "/train.jsonl", "models", "list"},
                  &out);
  EXPECT_EQ(rc, 1);
  EXPECT_TRUE(absl::StrContains(out, "ca_cert")) << out;
}

TEST_F(TlsTest, WorkerPortNeedsAClientCertificateFromTheWorkerCa) {
  // With the worker certificate the call reaches the service (and is
  // answered about the missing job, not the caller).
  grpc::Status st = FetchAsWorker(cluster_->worker_tls());
  EXPECT_NE(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_NE(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();

  // Without a client certificate: refused at the handshake.
  st = FetchAsWorker(cluster_->client_tls());
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();

  // With a client certificate from another CA: refused too.
  ChannelTls rogue = cluster_->client_tls();
  rogue.cert_file = Rogue() + "/worker.pem";
  rogue.key_file = Rogue() + "/worker.key";
  st = FetchAsWorker(rogue);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();

  // The public port does not serve the worker service at all.
  auto channel = cluster_->NewChannel();
  auto stub = v1::Worker::NewStub(channel);
  grpc::ClientContext ctx;
  v1::FetchFileRequest r;
  auto reader = stub->FetchFile(&ctx, r);
  v1::FileChunk chunk;
  reader->Read(&chunk);
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

// Starts lathed with `flags` on a fresh data dir and waits until it exits
// (exit_code) or serves (port; exit_code -1, and it serves until the result
// goes out of scope).
struct Started {
  std::string root;
  std::unique_ptr<Subprocess> process;
  int exit_code = -1;
  std::string log;
  std::string port;
  ~Started() {
    process.reset();  // SIGKILL if still serving
    std::error_code ec;
    fs::remove_all(root, ec);
  }
};

std::unique_ptr<Started> StartLathed(const std::string& name, const std::vector<std::string>& flags) {
  std::string root = TestRoot("tls-" + name);
  fs::remove_all(root);
  fs::create_directories(root);
  std::vector<std::string> argv = {Binaries().lathed, "--listen=127.0.0.1:0",
                                   "--data_dir=" + root + "/data",
                                   "--port_file=" + root + "/port"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  auto s = std::make_unique<Started>();
  s->root = root;
  s->process = std::make_unique<Subprocess>(argv, root + "/lathed.log");
  // Until it exits (a refused start) or serves (the port file appears).
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    s->exit_code = s->process->Wait(absl::Milliseconds(100));
    if (s->exit_code != -1) break;
    s->port = ReadFileOrEmpty(root + "/port");
    if (!s->port.empty()) break;
  }
  s->log = ReadFileOrEmpty(root + "/lathed.log");
  return s;
}

TEST_F(TlsTest, LathedRefusesToStartWithoutTlsOrExplicitPlaintext) {
  auto none = StartLathed("none", {});
  EXPECT_EQ(none->exit_code, 1) << none->log;
  EXPECT_TRUE(absl::StrContains(none->log, "--tls_cert")) << none->log;
  EXPECT_TRUE(absl::StrContains(none->log, "--insecure")) << none->log;

  const std::string certs = cluster_->certs_dir();
  auto mismatched = StartLathed(
      "mismatch", {"--tls_cert=" + certs + "/server.pem", "--tls_key=" + certs + "/worker.key"});
  EXPECT_EQ(mismatched->exit_code, 1) << mismatched->log;
  EXPECT_TRUE(absl::StrContains(mismatched->log, "--tls_key")) << mismatched->log;

  auto missing = StartLathed(
      "missing", {"--tls_cert=" + certs + "/nope.pem", "--tls_key=" + certs + "/server.key"});
  EXPECT_EQ(missing->exit_code, 1) << missing->log;
  EXPECT_TRUE(absl::StrContains(missing->log, "--tls_cert: cannot read")) << missing->log;

  // An encrypted key is refused by name (no passphrase prompt that would
  // hang a service).
  std::string out;
  ASSERT_EQ(RunCommand({"openssl", "ec", "-in", certs + "/server.key", "-aes256", "-passout",
                        "pass:secret", "-out", certs + "/encrypted.key"},
                       &out),
            0)
      << out;
  auto encrypted = StartLathed(
      "encrypted", {"--tls_cert=" + certs + "/server.pem", "--tls_key=" + certs + "/encrypted.key"});
  EXPECT_EQ(encrypted->exit_code, 1) << encrypted->log;
  EXPECT_TRUE(absl::StrContains(encrypted->log, "--tls_key")) << encrypted->log;

  auto bad_ca = StartLathed("bad-ca", {"--tls_cert=" + certs + "/server.pem",
                                       "--tls_key=" + certs + "/server.key",
                                       "--worker_client_ca=" + certs + "/server.key"});
  EXPECT_EQ(bad_ca->exit_code, 1) << bad_ca->log;
  EXPECT_TRUE(absl::StrContains(bad_ca->log, "--worker_client_ca")) << bad_ca->log;

  auto tiny = StartLathed("tiny-messages", {"--insecure", "--max_message_bytes=1000"});
  EXPECT_EQ(tiny->exit_code, 1) << tiny->log;
  EXPECT_TRUE(absl::StrContains(tiny->log, "--max_message_bytes")) << tiny->log;

  auto plaintext = StartLathed("plaintext", {"--insecure"});
  EXPECT_EQ(plaintext->exit_code, -1) << plaintext->log;
  EXPECT_FALSE(plaintext->port.empty()) << plaintext->log;
  EXPECT_TRUE(absl::StrContains(plaintext->log, "PLAINTEXT")) << plaintext->log;
}

TEST_F(TlsTest, OnOnePortWorkerCallsNeedAVerifiedCertificate) {
  // mTLS for workers without a separate worker port: the certificate is
  // optional at the handshake (users have none), so the worker service
  // itself insists on one.
  const std::string certs = cluster_->certs_dir();
  auto s = StartLathed("one-port", {"--tls_cert=" + certs + "/server.pem",
                                       "--tls_key=" + certs + "/server.key",
                                       "--worker_client_ca=" + certs + "/ca.pem"});
  ASSERT_EQ(s->exit_code, -1) << s->log;
  ASSERT_FALSE(s->port.empty()) << s->log;
  std::string target = absl::StrCat("127.0.0.1:", absl::StripAsciiWhitespace(s->port));
  auto call = [&](const ChannelTls& tls) {
    return FetchAsWorkerAt(target, TestRoot("tls-one-port") + "/data", tls);
  };
  grpc::Status no_cert = call(cluster_->client_tls());
  EXPECT_EQ(no_cert.error_code(), grpc::StatusCode::UNAUTHENTICATED) << no_cert.error_message();
  EXPECT_TRUE(absl::StrContains(no_cert.error_message(), "client certificate"))
      << no_cert.error_message();
  ChannelTls rogue = cluster_->client_tls();
  rogue.cert_file = Rogue() + "/worker.pem";
  rogue.key_file = Rogue() + "/worker.key";
  grpc::Status foreign = call(rogue);  // refused at the handshake
  EXPECT_EQ(foreign.error_code(), grpc::StatusCode::UNAVAILABLE) << foreign.error_message();
  grpc::Status with_cert = call(cluster_->worker_tls());
  EXPECT_NE(with_cert.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << with_cert.error_message();
  EXPECT_NE(with_cert.error_code(), grpc::StatusCode::UNAVAILABLE) << with_cert.error_message();
}

}  // namespace
}  // namespace lathe::testing
