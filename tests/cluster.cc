#include "tests/cluster.h"

#include <csignal>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace lathe::testing {

namespace fs = std::filesystem;

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
  std::vector<std::string> argv = {
      c->bin_.lathed, "--listen=127.0.0.1:0", "--data_dir=" + root + "/data",
      "--base_model=lathe-demo=" + c->demo_dir_ + "/model",
      "--base_learning_rate=2e-3", "--lease_seconds=4",
      "--port_file=" + port_file};
  argv.insert(argv.end(), lathed_flags.begin(), lathed_flags.end());
  c->lathed_ = std::make_unique<Subprocess>(argv, root + "/lathed.log");
  std::string port = WaitForFile(port_file, absl::Seconds(20));
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(port), &c->port_)) {
    return absl::InternalError(absl::StrCat("lathed did not start:\n", c->Logs()));
  }
  c->client_ = std::make_unique<Client>(c->address());
  for (int i = 0; i < workers; ++i) c->AddWorker();
  return c;
}

int Cluster::AddWorker() {
  int i = static_cast<int>(workers_.size());
  workers_.push_back(std::make_unique<Subprocess>(
      std::vector<std::string>{bin_.worker, "serve", "--server=" + address(),
                               absl::StrCat("--worker_id=worker-", i),
                               absl::StrCat("--work_dir=", root_, "/worker-", i)},
      absl::StrCat(root_, "/worker-", i, ".log")));
  return i;
}

Cluster::~Cluster() {
  // Close our channel first: an idle client that polls nothing would leave
  // lathed's graceful shutdown waiting on its ping.
  client_.reset();
  for (auto& w : workers_) w->Signal(SIGTERM);
  for (auto& w : workers_) w->Wait(absl::Seconds(5));
  if (lathed_) {
    lathed_->Signal(SIGTERM);
    lathed_->Wait(absl::Seconds(10));
  }
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
