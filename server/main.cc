// lathed: the Lathe control plane. Reads flags into LathedOptions and runs.
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "server/lathed.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070", "host:port to serve on");
ABSL_FLAG(std::string, worker_listen, "",
          "host:port for the worker service alone (e.g. a cluster-internal "
          "address); default: workers use --listen");
ABSL_FLAG(std::string, http_listen, "",
          "host:port for HTTP: the OpenAI-compatible REST API under /v1, "
          "/metrics, /healthz, /readyz and the dashboard at / (TLS as "
          "--tls_cert, or plaintext with --insecure); default: off");
ABSL_FLAG(int, http_threads, 64,
          "HTTP requests served at once; event streams (the dashboard's live "
          "curves) may hold half of them");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain served on both ports (scripts/make-certs.sh "
          "makes a private CA, this and the key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, worker_client_ca, "",
          "PEM CA: workers must also present a client certificate it signed "
          "(mutual TLS; required at the handshake on --worker_listen)");
ABSL_FLAG(bool, insecure, false,
          "serve plaintext instead of TLS (loopback or a trusted network "
          "only; a warning is logged)");
ABSL_FLAG(int, max_message_bytes, 16 << 20,
          "largest gRPC message accepted (RESOURCE_EXHAUSTED beyond)");
ABSL_FLAG(int64_t, max_line_bytes, 4 << 20,
          "longest accepted line of an uploaded JSONL file");
ABSL_FLAG(int64_t, max_examples_per_file, 1'000'000,
          "most examples (lines) in one uploaded file");
ABSL_FLAG(int, max_jobs_in_flight_per_project, 100,
          "most jobs of one project that are queued, running or paused at once");
ABSL_FLAG(int, max_uploads_in_flight_per_key,
          lathe::OperationOptions().max_uploads_in_flight_per_key,
          "most uploads one API key has open at once (RESOURCE_EXHAUSTED "
          "beyond)");
ABSL_FLAG(int, max_uploads_in_flight,
          lathe::OperationOptions().max_uploads_in_flight,
          "most uploads open at once, all keys together (each holds up to "
          "about 4 x max_line_bytes plus a message)");
ABSL_FLAG(std::string, data_dir, ".lathe", "folder for lathe.db and blobs");
ABSL_FLAG(std::vector<std::string>, base_model, {},
          "base models as NAME=FOLDER, comma-separated");
ABSL_FLAG(int64_t, max_upload_bytes, 1LL << 30, "largest accepted upload");
ABSL_FLAG(double, base_learning_rate, 2e-4,
          "learning rate at learning_rate_multiplier 1");
ABSL_FLAG(int, lease_seconds, 15,
          "a running job's lease; a worker silent this long loses the job");
ABSL_FLAG(bool, preemption, true,
          "let a queued job that no worker is free for stop strictly "
          "lower-priority running jobs (they checkpoint, hand back and are "
          "queued again in their place)");
ABSL_FLAG(int, preemption_grace_seconds, 600,
          "a job is not preempted again within this many seconds");
ABSL_FLAG(int, max_attempts, 3,
          "failed attempts (a worker lost) per job before it fails; pauses and "
          "hand-backs do not count");
ABSL_FLAG(int, checkpoint_every_steps, 100,
          "workers checkpoint every this many steps (a lost worker costs at "
          "most this many)");
ABSL_FLAG(int, max_stream_seconds, 3600,
          "a WatchJob stream ends (UNAVAILABLE) after this long; clients "
          "re-attach with their last event id");
ABSL_FLAG(std::string, admin_key_file, "",
          "the bootstrap admin API key (default <data_dir>/admin.key, created "
          "on first start)");
ABSL_FLAG(std::string, worker_token_file, "",
          "the secret workers present (default <data_dir>/worker.token, "
          "created on first start)");
ABSL_FLAG(double, webhook_retry_base_seconds,
          absl::ToDoubleSeconds(lathe::WebhookRetryOptions().base),
          "a failed webhook delivery is retried after this, then on the "
          "Standard Webhooks schedule scaled to it (5 s: 5 s, 5 min, 30 min, "
          "2 h, 5 h, 10 h, ...)");
ABSL_FLAG(int, webhook_max_attempts, lathe::WebhookRetryOptions().max_attempts,
          "attempts of a webhook delivery (the first and the retries) before "
          "it is recorded as failed");
ABSL_FLAG(double, webhook_timeout_seconds,
          absl::ToDoubleSeconds(lathe::WebhookDispatcherOptions().read_timeout),
          "a webhook receiver silent this long fails the attempt");
ABSL_FLAG(std::string, webhook_ca_cert, "",
          "PEM CA(s) that https webhook receivers' certificates must chain "
          "to (default: the system's)");
ABSL_FLAG(std::string, port_file, "",
          "if set, the bound port is written here once serving (for --listen "
          "with port 0)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "lathed: the Lathe fine-tuning control plane.\n"
      "  lathed --data_dir DIR --listen 127.0.0.1:7070 "
      "--base_model NAME=FOLDER");
  // --help lists the flags of this file (absl's default looks for files
  // named after the program, and lathed's are in main.cc).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server/main.cc");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  lathe::LathedOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.worker_listen = absl::GetFlag(FLAGS_worker_listen);
  o.http_listen = absl::GetFlag(FLAGS_http_listen);
  o.http_threads = absl::GetFlag(FLAGS_http_threads);
  o.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  o.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  o.tls.insecure = absl::GetFlag(FLAGS_insecure);
  o.worker_client_ca = absl::GetFlag(FLAGS_worker_client_ca);
  o.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  o.operations.max_line_bytes = absl::GetFlag(FLAGS_max_line_bytes);
  o.operations.max_examples_per_file =
      absl::GetFlag(FLAGS_max_examples_per_file);
  o.operations.max_jobs_in_flight_per_project =
      absl::GetFlag(FLAGS_max_jobs_in_flight_per_project);
  o.operations.max_uploads_in_flight_per_key =
      absl::GetFlag(FLAGS_max_uploads_in_flight_per_key);
  o.operations.max_uploads_in_flight =
      absl::GetFlag(FLAGS_max_uploads_in_flight);
  if (o.operations.max_uploads_in_flight_per_key < 1 ||
      o.operations.max_uploads_in_flight < 1) {
    std::cerr << "--max_uploads_in_flight_per_key and --max_uploads_in_flight "
                 "must be at least 1\n";
    return 2;
  }
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
  o.operations.max_upload_bytes = absl::GetFlag(FLAGS_max_upload_bytes);
  o.operations.job_defaults.base_learning_rate =
      absl::GetFlag(FLAGS_base_learning_rate);
  o.coordinator.lease_ttl = absl::Seconds(absl::GetFlag(FLAGS_lease_seconds));
  o.coordinator.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  o.coordinator.preemption = absl::GetFlag(FLAGS_preemption);
  o.coordinator.preemption_grace =
      absl::Seconds(absl::GetFlag(FLAGS_preemption_grace_seconds));
  o.feed.max_follow = absl::Seconds(absl::GetFlag(FLAGS_max_stream_seconds));
  o.admin_key_file = absl::GetFlag(FLAGS_admin_key_file);
  o.worker_token_file = absl::GetFlag(FLAGS_worker_token_file);
  o.operations.job_defaults.checkpoint_every_steps =
      absl::GetFlag(FLAGS_checkpoint_every_steps);
  o.webhooks.retry.base =
      absl::Seconds(absl::GetFlag(FLAGS_webhook_retry_base_seconds));
  o.webhooks.retry.max_attempts = absl::GetFlag(FLAGS_webhook_max_attempts);
  o.webhooks.read_timeout =
      absl::Seconds(absl::GetFlag(FLAGS_webhook_timeout_seconds));
  o.webhooks.ca_file = absl::GetFlag(FLAGS_webhook_ca_cert);
  if (o.webhooks.retry.base <= absl::ZeroDuration() ||
      o.webhooks.read_timeout <= absl::ZeroDuration() ||
      o.webhooks.retry.max_attempts < 1) {
    std::cerr << "--webhook_retry_base_seconds and --webhook_timeout_seconds "
                 "must be positive, --webhook_max_attempts at least 1\n";
    return 2;
  }

  // Blocks of 1 MiB and more (upload lines and chunks) are mmapped and go
  // back to the system when freed, instead of staying in malloc's arenas
  // after a burst of uploads (a fixed threshold also stops glibc raising it
  // to the largest block freed). tests/upload_memory_bench measures it.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);

  // Block SIGINT/SIGTERM before any thread starts (threads inherit the
  // mask) and wait for one on this thread.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  // A write past RLIMIT_FSIZE then fails with EFBIG, which the stores report
  // as an error, instead of killing lathed.
  std::signal(SIGXFSZ, SIG_IGN);

  auto server = lathe::Lathed::Start(o);
  if (!server.ok()) {
    spdlog::error("cannot start: {}", server.status().ToString());
    return 1;
  }
  if (std::string pf = absl::GetFlag(FLAGS_port_file); !pf.empty()) {
    if ((*server)->worker_port() != (*server)->port()) {
      std::string wtmp = pf + ".worker.tmp";
      std::ofstream(wtmp) << (*server)->worker_port() << "\n";
      std::rename(wtmp.c_str(), (pf + ".worker").c_str());
    }
    if ((*server)->http_port() != 0) {
      std::string htmp = pf + ".http.tmp";
      std::ofstream(htmp) << (*server)->http_port() << "\n";
      std::rename(htmp.c_str(), (pf + ".http").c_str());
    }
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
