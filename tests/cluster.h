// A real Lathe on loopback for integration tests: one lathed and N
// lathe-worker processes over a temporary data directory, with the demo
// model registered as base model "lathe-demo".
#ifndef LATHE_TESTS_CLUSTER_H_
#define LATHE_TESTS_CLUSTER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/client.h"
#include "common/tls.h"
#include "tests/subprocess.h"

namespace lathe::testing {

// Paths of the built binaries (set by CMake).
struct Binaries {
  std::string lathed = LATHE_LATHED_BIN;
  std::string worker = LATHE_WORKER_BIN;
  std::string cli = LATHE_CLI_BIN;
};

// A fresh folder for one test process: <tmp>/lathe-<name>-<pid>, so that
// concurrent test runs never share one. Cluster removes it when done.
std::string TestRoot(const std::string& name);

// Serves as production does: TLS on the public port from a private CA made
// by scripts/make-certs.sh, and workers on their own port with mutual TLS
// plus the worker token. With "--insecure" among lathed_flags, everything
// is plaintext on one port instead.
class Cluster {
 public:
  // Empties `root`, makes the demo in `root`/demo and starts lathed (with
  // `lathed_flags` added) and `workers` workers.
  static absl::StatusOr<std::unique_ptr<Cluster>> Start(
      const std::string& root, int workers,
      const std::vector<std::string>& lathed_flags = {});
  ~Cluster();

  // Starts one more worker (with `flags` added); returns its index.
  int AddWorker(const std::vector<std::string>& flags = {});
  Subprocess& worker(int i) { return *workers_[i]; }
  // Kills lathed with SIGKILL and starts it again on the same port and data
  // directory. INTERNAL if it does not come back.
  absl::Status RestartLathed();
  Subprocess& lathed() { return *lathed_; }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // Where workers connect (== address() when insecure).
  std::string worker_address() const {
    return "127.0.0.1:" + std::to_string(worker_port_);
  }
  // How a user's channel reaches address() (the CA, or insecure).
  ChannelTls client_tls() const;
  // As a worker does: plus the worker client certificate.
  ChannelTls worker_tls() const;
  // Flags that give the CLI client_tls(), e.g. {"--ca_cert", path}.
  std::vector<std::string> CliTlsFlags() const;
  // A new channel to address() / worker_address().
  std::shared_ptr<grpc::Channel> NewChannel() const;
  std::shared_ptr<grpc::Channel> NewWorkerChannel() const;
  bool insecure() const { return insecure_; }
  // With "--http_listen=..." among lathed_flags: the HTTP port lathed bound
  // and its base URL ("https://127.0.0.1:PORT", http:// when insecure);
  // 0 and "" without.
  int http_port() const { return http_port_; }
  std::string http_url() const;
  // The folder of ca.pem, server.pem/.key and worker.pem/.key.
  std::string certs_dir() const { return root_ + "/certs"; }
  // A client with a user key of project "default".
  Client& client() { return *client_; }
  // A client with the bootstrap admin key.
  Client& admin() { return *admin_; }
  // A client with a new user key of `project`.
  std::unique_ptr<Client> ClientFor(const std::string& project);
  // A new user key's secret for `project`.
  std::string NewKey(const std::string& project);
  const std::string& api_key() const { return api_key_; }
  const std::string& demo_dir() const { return demo_dir_; }
  const std::string& root() const { return root_; }
  // lathed's and the workers' logs, for failure messages.
  std::string Logs() const;

 private:
  Cluster() = default;

  Binaries bin_;
  std::string root_;
  std::string demo_dir_;
  int port_ = 0;
  int http_port_ = 0;
  int worker_port_ = 0;
  bool insecure_ = false;
  std::vector<std::string> lathed_argv_;
  std::unique_ptr<Subprocess> lathed_;
  std::vector<std::unique_ptr<Subprocess>> workers_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<Client> admin_;
  std::string api_key_;
  // Makes admin_ and client_ (after a start or restart).
  absl::Status Connect();
};

}  // namespace lathe::testing

#endif  // LATHE_TESTS_CLUSTER_H_
