// lathe-worker: `serve` runs the agent against lathed (full build only);
// every other subcommand is the engine's own CLI (train, make-demo, …).
#include <cstring>
#include <iostream>

#include "worker/engine/cli/engine_cli.h"

#if LATHE_WITH_AGENT
#include <csignal>
#include <fstream>
#include <memory>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "spdlog/spdlog.h"
#include "worker/agent/agent.h"

ABSL_FLAG(std::string, server, "127.0.0.1:7070", "lathed's host:port");
ABSL_FLAG(std::string, worker_id, "", "this worker's name (default host-pid)");
ABSL_FLAG(std::string, work_dir, ".lathe-worker", "folder for attempt files");
ABSL_FLAG(std::string, token_file, "",
          "file holding lathed's worker token (lathed writes it to "
          "<data_dir>/worker.token)");
ABSL_FLAG(std::string, ca_cert, "",
          "PEM CA that signed lathed's certificate (default: system roots)");
ABSL_FLAG(std::string, tls_cert, "",
          "this worker's PEM client certificate, for a lathed with "
          "--worker_client_ca (mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_server_name, "",
          "expect this name in lathed's certificate instead of --server's host");
ABSL_FLAG(bool, insecure, false, "plaintext, for a lathed started with --insecure");
ABSL_FLAG(std::string, device, "auto",
          "the device to train on and report to lathed: auto (the first GPU "
          "if there is one, else the CPU), cpu, cuda or cuda:N");
ABSL_FLAG(std::string, model_source, "auto",
          "auto: read a base model at the server's path when readable here, "
          "else fetch it from lathed; server: always fetch (cached by content "
          "hash under work_dir/models)");
ABSL_FLAG(std::string, rendezvous_host, "",
          "multi-worker jobs: the address or host name of this machine that "
          "the job's other workers can reach (this worker's Gloo connections "
          "listen there; as rank 0 it is reported to lathed for the c10d "
          "store); empty: lathed uses the address it sees this worker at, and "
          "Gloo GLOO_SOCKET_IFNAME's interface or this host name's address");
ABSL_FLAG(int, rendezvous_port, 0,
          "multi-worker jobs: the port rank 0's c10d TCPStore listens on "
          "(0: any free port)");
ABSL_FLAG(absl::Duration, rendezvous_timeout, absl::Minutes(3),
          "multi-worker jobs: how long a rank waits for the others to gather, "
          "and for each collective, before the attempt fails");
ABSL_FLAG(int, max_jobs, 1,
          "jobs this worker trains at once (1..64): above 1, lathed packs "
          "LoRA and prompt-tuning jobs of one base model onto it, trained "
          "together over one copy of the base when its device has room");

namespace {

int Serve(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "lathe-worker serve --server HOST:PORT [--worker_id ID] [--work_dir DIR] "
      "[--device auto|cpu|cuda|cuda:N]");
  absl::ParseCommandLine(argc, argv);
  // Block SIGINT/SIGTERM in every thread; one thread waits for them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  lathe::worker::AgentOptions o;
  o.server = absl::GetFlag(FLAGS_server);
  o.worker_id = absl::GetFlag(FLAGS_worker_id);
  o.work_dir = absl::GetFlag(FLAGS_work_dir);
  o.device = absl::GetFlag(FLAGS_device);
  std::string token_file = absl::GetFlag(FLAGS_token_file);
  std::ifstream token_in(token_file);
  if (token_file.empty() || !(token_in >> o.token)) {
    std::cerr << "--token_file: cannot read the worker token from \"" << token_file
              << "\" (lathed writes it to <data_dir>/worker.token)\n";
    return 2;
  }
  std::string source = absl::GetFlag(FLAGS_model_source);
  if (source != "auto" && source != "server") {
    std::cerr << "--model_source: use auto or server\n";
    return 2;
  }
  o.use_local_models = source == "auto";
  o.tls.insecure = absl::GetFlag(FLAGS_insecure);
  o.tls.ca_file = absl::GetFlag(FLAGS_ca_cert);
  o.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  o.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  o.tls.server_name = absl::GetFlag(FLAGS_tls_server_name);
  o.rendezvous_host = absl::GetFlag(FLAGS_rendezvous_host);
  o.rendezvous_port = absl::GetFlag(FLAGS_rendezvous_port);
  o.rendezvous_timeout = absl::GetFlag(FLAGS_rendezvous_timeout);
  o.max_attempts = absl::GetFlag(FLAGS_max_jobs);
  if (o.max_attempts < 1 || o.max_attempts > 64) {
    std::cerr << "--max_jobs: " << o.max_attempts << " is not in 1..64\n";
    return 2;
  }
  if (o.rendezvous_port < 0 || o.rendezvous_port > 65535) {
    std::cerr << "--rendezvous_port: " << o.rendezvous_port
              << " is not a port (0..65535)\n";
    return 2;
  }
  auto agent = lathe::worker::Agent::Create(o);
  if (!agent.ok()) {
    std::cerr << "--" << agent.status().message() << "\n";
    return 2;
  }
  // Shared with the signal thread, which may still wake while main returns.
  std::shared_ptr<lathe::worker::Agent> a = *std::move(agent);
  std::thread signals([a, set] {
    int sig = 0;
    sigwait(&set, &sig);
    spdlog::info("signal {}: stopping", sig);
    a->Stop();
  });
  signals.detach();
  a->Run();
  return 0;
}

}  // namespace
#endif

int main(int argc, char** argv) {
#if LATHE_WITH_AGENT
  if (argc >= 2 && std::strcmp(argv[1], "serve") == 0) {
    return Serve(argc - 1, argv + 1);
  }
#endif
  return lathe::engine::RunEngineCommand(argc, argv);
}
