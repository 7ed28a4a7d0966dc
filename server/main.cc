// lathed: the Lathe control plane. Reads flags into LathedOptions and runs.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "server/lathed.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070", "host:port to serve on");
ABSL_FLAG(std::string, data_dir, ".lathe", "folder for lathe.db and blobs");
ABSL_FLAG(std::vector<std::string>, base_model, {},
          "base models as NAME=FOLDER, comma-separated");
ABSL_FLAG(int64_t, max_upload_bytes, 1LL << 30, "largest accepted upload");
ABSL_FLAG(double, base_learning_rate, 2e-4,
          "learning rate at learning_rate_multiplier 1");
ABSL_FLAG(int, lease_seconds, 15,
          "a running job's lease; a worker silent this long loses the job");
ABSL_FLAG(int, max_attempts, 3, "attempts per job before it fails");
ABSL_FLAG(int, checkpoint_every_steps, 100,
          "workers checkpoint every this many steps (a lost worker costs at "
          "most this many)");
ABSL_FLAG(std::string, admin_key_file, "",
          "the bootstrap admin API key (default <data_dir>/admin.key, created "
          "on first start)");
ABSL_FLAG(std::string, worker_token_file, "",
          "the secret workers present (default <data_dir>/worker.token, "
          "created on first start)");
ABSL_FLAG(std::string, port_file, "",
          "if set, the bound port is written here once serving (for --listen "
          "with port 0)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "lathed: the Lathe fine-tuning control plane.\n"
      "  lathed --data_dir DIR --listen 127.0.0.1:7070 "
      "--base_model NAME=FOLDER");
  absl::ParseCommandLine(argc, argv);
  lathe::LathedOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  for (const std::string& spec : absl::GetFlag(FLAGS_base_model)) {
    std::pair<std::string, std::string> kv = absl::StrSplit(spec, '=');
    if (kv.first.empty() || kv.second.empty()) {
      std::cerr << "--base_model: expected NAME=FOLDER, got \"" << spec
                << "\"\n";
      return 2;
    }
    o.base_models[kv.first] = kv.second;
  }
  o.service.max_upload_bytes = absl::GetFlag(FLAGS_max_upload_bytes);
  o.coordinator.base_learning_rate = absl::GetFlag(FLAGS_base_learning_rate);
  o.coordinator.lease_ttl = absl::Seconds(absl::GetFlag(FLAGS_lease_seconds));
  o.coordinator.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  o.admin_key_file = absl::GetFlag(FLAGS_admin_key_file);
  o.worker_token_file = absl::GetFlag(FLAGS_worker_token_file);
  o.coordinator.checkpoint_every_steps = absl::GetFlag(FLAGS_checkpoint_every_steps);

  // Block SIGINT/SIGTERM before any thread starts (threads inherit the
  // mask) and wait for one on this thread.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  auto server = lathe::Lathed::Start(o);
  if (!server.ok()) {
    spdlog::error("cannot start: {}", server.status().ToString());
    return 1;
  }
  if (std::string pf = absl::GetFlag(FLAGS_port_file); !pf.empty()) {
    std::string tmp = pf + ".tmp";
    std::ofstream(tmp) << (*server)->port() << "\n";
    std::rename(tmp.c_str(), pf.c_str());
  }
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("signal {}: shutting down", sig);
  (*server)->Shutdown(absl::Seconds(10));
  return 0;
}
