#include "tests/cluster.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/ascii.h"

namespace lathe::testing {

namespace fs = std::filesystem;

namespace {

// A TCP port on loopback that was free a moment ago.
int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

}  // namespace

std::string Cluster::http_url() const {
  if (http_port_ == 0) return "";
  return absl::StrCat(insecure_ ? "http" : "https", "://127.0.0.1:", http_port_);
}

std::string TestRoot(const std::string& name) {
  const char* tmp = std::getenv("TMPDIR");
  return absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/lathe-", name, "-", getpid());
}

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Start(
    const std::string& root, int workers,
    const std::vector<std::string>& lathed_flags) {
  std::unique_ptr<Cluster> c(new Cluster());
  c->root_ = root;
  c->demo_dir_ = root + "/demo";
  fs::remove_all(root);
  fs::create_directories(root);
  std::string out;
  int rc = RunCommand({c->bin_.worker, "make-demo", "--out", c->demo_dir_}, &out);
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("make-demo failed (", rc, "): ", out));
  }
  std::string port_file = root + "/lathed.port";
  fs::remove(port_file);
  // Fixed ports (picked free now) so a restarted lathed is found again.
  c->port_ = FreePort();
  c->insecure_ = std::find(lathed_flags.begin(), lathed_flags.end(), "--insecure") !=
                 lathed_flags.end();
  std::vector<std::string> argv = {
      c->bin_.lathed, absl::StrCat("--listen=127.0.0.1:", c->port_)};
  if (c->insecure_) {
    c->worker_port_ = c->port_;
  } else {
    do {
      c->worker_port_ = FreePort();
    } while (c->worker_port_ == c->port_);
    rc = RunCommand({"bash", std::string(LATHE_SOURCE_DIR) + "/scripts/make-certs.sh",
                     c->certs_dir()},
                    &out);
    if (rc != 0) {
      return absl::InternalError(absl::StrCat("make-certs.sh failed (", rc, "): ", out));
    }
    argv.insert(argv.end(),
                {absl::StrCat("--worker_listen=127.0.0.1:", c->worker_port_),
                 "--tls_cert=" + c->certs_dir() + "/server.pem",
                 "--tls_key=" + c->certs_dir() + "/server.key",
                 "--worker_client_ca=" + c->certs_dir() + "/ca.pem"});
  }
  argv.insert(argv.end(), {
      "--data_dir=" + root + "/data",
      "--base_model=lathe-demo=" + c->demo_dir_ + "/model",
      "--base_learning_rate=2e-3", "--lease_seconds=4",
      "--port_file=" + port_file});
  argv.insert(argv.end(), lathed_flags.begin(), lathed_flags.end());
  c->lathed_argv_ = argv;
  c->lathed_ = std::make_unique<Subprocess>(argv, root + "/lathed.log");
  if (WaitForFile(port_file, absl::Seconds(20)).empty()) {
    return absl::InternalError(absl::StrCat("lathed did not start:\n", c->Logs()));
  }
  if (std::string http = ReadFileOrEmpty(port_file + ".http"); !http.empty()) {
    c->http_port_ = std::stoi(http);
  }
  if (auto st = c->Connect(); !st.ok()) return st;
  for (int i = 0; i < workers; ++i) c->AddWorker();
  return c;
}

absl::Status Cluster::Connect() {
  std::string admin_key(absl::StripAsciiWhitespace(
      ReadFileOrEmpty(root_ + "/data/admin.key")));
  if (admin_key.empty()) return absl::InternalError("no data/admin.key");
  admin_ = std::make_unique<Client>(NewChannel(), admin_key);
  if (api_key_.empty()) api_key_ = NewKey("default");
  if (api_key_.empty()) return absl::InternalError(absl::StrCat("no user key:\n", Logs()));
  client_ = std::make_unique<Client>(NewChannel(), api_key_);
  return absl::OkStatus();
}

ChannelTls Cluster::client_tls() const {
  ChannelTls tls;
  tls.insecure = insecure_;
  if (!insecure_) tls.ca_file = certs_dir() + "/ca.pem";
  return tls;
}

ChannelTls Cluster::worker_tls() const {
  ChannelTls tls = client_tls();
  if (!insecure_) {
    tls.cert_file = certs_dir() + "/worker.pem";
    tls.key_file = certs_dir() + "/worker.key";
  }
  return tls;
}

std::vector<std::string> Cluster::CliTlsFlags() const {
  if (insecure_) return {"--insecure"};
  return {"--ca_cert", certs_dir() + "/ca.pem"};
}

namespace {
std::shared_ptr<grpc::Channel> MustMakeChannel(const std::string& target,
                                               const ChannelTls& tls) {
  auto channel = MakeChannel(target, tls, Client::ChannelArgs());
  if (!channel.ok()) {
    std::fprintf(stderr, "cluster: %s\n", channel.status().ToString().c_str());
    std::abort();
  }
  return *channel;
}
}  // namespace

std::shared_ptr<grpc::Channel> Cluster::NewChannel() const {
  return MustMakeChannel(address(), client_tls());
}

std::shared_ptr<grpc::Channel> Cluster::NewWorkerChannel() const {
  return MustMakeChannel(worker_address(), worker_tls());
}

std::string Cluster::NewKey(const std::string& project) {
  v1::CreateApiKeyRequest r;
  r.set_project(project);
  auto key = admin_->CreateApiKey(r);
  return key.ok() ? key->secret() : "";
}

std::unique_ptr<Client> Cluster::ClientFor(const std::string& project) {
  return std::make_unique<Client>(NewChannel(), NewKey(project));
}

absl::Status Cluster::RestartLathed() {
  lathed_->Signal(SIGKILL);
  lathed_->Wait(absl::Seconds(10));
  std::string port_file = root_ + "/lathed.port";
  fs::remove(port_file);
  lathed_ = std::make_unique<Subprocess>(lathed_argv_, root_ + "/lathed.log");
  if (WaitForFile(port_file, absl::Seconds(20)).empty()) {
    return absl::InternalError(absl::StrCat("lathed did not restart:\n", Logs()));
  }
  // Fresh channels: the old ones may be waiting out a reconnect backoff.
  return Connect();
}

int Cluster::AddWorker(const std::vector<std::string>& flags) {
  int i = static_cast<int>(workers_.size());
  std::vector<std::string> argv = {bin_.worker, "serve", "--server=" + worker_address(),
                                   absl::StrCat("--worker_id=worker-", i),
                                   absl::StrCat("--work_dir=", root_, "/worker-", i),
                                   "--token_file=" + root_ + "/data/worker.token"};
  if (insecure_) {
    argv.push_back("--insecure");
  } else {
    argv.insert(argv.end(), {"--ca_cert=" + certs_dir() + "/ca.pem",
                             "--tls_cert=" + certs_dir() + "/worker.pem",
                             "--tls_key=" + certs_dir() + "/worker.key"});
  }
  argv.insert(argv.end(), flags.begin(), flags.end());
  workers_.push_back(std::make_unique<Subprocess>(
      argv, absl::StrCat(root_, "/worker-", i, ".log")));
  return i;
}

Cluster::~Cluster() {
  // Close our channel first: an idle client that polls nothing would leave
  // lathed's graceful shutdown waiting on its ping.
  client_.reset();
  admin_.reset();
  for (auto& w : workers_) w->Signal(SIGTERM);
  for (auto& w : workers_) w->Wait(absl::Seconds(5));
  if (lathed_) {
    lathed_->Signal(SIGTERM);
    lathed_->Wait(absl::Seconds(10));
  }
  std::error_code ec;
  fs::remove_all(root_, ec);
}

std::string Cluster::Logs() const {
  std::string out = "--- lathed.log\n" + ReadFileOrEmpty(root_ + "/lathed.log");
  for (size_t i = 0; i < workers_.size(); ++i) {
    out += absl::StrCat("--- worker-", i, ".log\n",
                        ReadFileOrEmpty(absl::StrCat(root_, "/worker-", i, ".log")));
  }
  return out;
}

}  // namespace lathe::testing
