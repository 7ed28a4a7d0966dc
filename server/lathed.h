// lathed, assembled: the store, the blob store, the coordinator, the
// operations, the gRPC services over them, the lease sweeper and the
// webhook dispatcher, under one data directory.
#ifndef LATHE_SERVER_LATHED_H_
#define LATHE_SERVER_LATHED_H_

#include <grpcpp/server.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/tls.h"
#include "server/coordinator.h"
#include "server/event_feed.h"
#include "server/http/http_gateway.h"
#include "server/http/metrics.h"
#include "server/operations/operations.h"
#include "server/services.h"
#include "server/webhooks/dispatcher.h"

namespace lathe {

struct LathedOptions {
  std::string listen = "127.0.0.1:7070";     // host:port; port 0 = any
  // The worker service's own port, e.g. on a cluster-internal interface.
  // Empty: workers connect to `listen` as users do.
  std::string worker_listen;
  // The HTTP port (server/http/http_gateway.h): OpenAI-compatible REST,
  // /metrics, /healthz, /readyz and the dashboard, with the same TLS.
  // Empty: off.
  std::string http_listen;
  int http_threads = 64;  // HTTP requests served at once
  // Both ports' certificate and key (or insecure). MakeServerCredentials
  // refuses a start with neither.
  ServerTls tls;
  // PEM CA of the workers' client certificates: workers must present one
  // (mutual TLS) in addition to the worker token. Empty: token only.
  std::string worker_client_ca;
  // Largest gRPC message lathed accepts (uploads stream in 1 MiB chunks).
  int max_message_bytes = 16 << 20;
  std::string data_dir = ".lathe";           // lathe.db and blobs/
  std::map<std::string, std::string> base_models;  // name -> folder
  OperationOptions operations;
  CoordinatorOptions coordinator;
  EventFeedOptions feed;  // WatchJob streams
  WebhookDispatcherOptions webhooks;  // sending webhook deliveries
  absl::Duration sweep_interval = absl::Seconds(1);
  // Secrets; empty = <data_dir>/admin.key and <data_dir>/worker.token,
  // created on first start (mode 0600).
  std::string admin_key_file;
  std::string worker_token_file;
};

class Lathed {
 public:
  // Opens the data directory, registers base models (each folder must hold
  // config.json), and starts serving.
  static absl::StatusOr<std::unique_ptr<Lathed>> Start(LathedOptions options);
  ~Lathed();

  int port() const { return port_; }
  // The worker port (== port() without worker_listen).
  int worker_port() const { return worker_port_; }
  // The HTTP port (0 without http_listen).
  int http_port() const;
  // Blocks until Shutdown() is called from another thread or a signal.
  void Wait();
  // Stops accepting calls, ends streams, and returns within `deadline`.
  void Shutdown(absl::Duration deadline);

 private:
  Lathed() = default;

  // The health service's answer for the server and each of its services.
  void SetServing(bool serving);

  std::unique_ptr<store::Store> store_;
  std::unique_ptr<store::BlobStore> blobs_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<EventFeed> feed_;
  std::unique_ptr<Operations> ops_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<FilesService> files_;
  std::unique_ptr<FineTuningService> fine_tuning_;
  std::unique_ptr<WorkerService> worker_;
  std::unique_ptr<ModelsService> models_;
  std::unique_ptr<WebhooksService> webhooks_;
  std::unique_ptr<WebhookDispatcher> webhook_dispatcher_;
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<HttpGateway> http_;  // null without http_listen
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> worker_server_;  // null without worker_listen
  std::atomic<bool> shutting_down_{false};
  std::thread sweeper_;
  int port_ = 0;
  int worker_port_ = 0;
};

}  // namespace lathe

#endif  // LATHE_SERVER_LATHED_H_
