#include "server/lathed.h"

#include <filesystem>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/http/dashboard_assets.h"
#include "server/request_interceptor.h"
#include "spdlog/spdlog.h"

namespace lathe {

namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<Lathed>> Lathed::Start(LathedOptions options) {
  // TLS first: a bad certificate stops the start before anything is
  // opened. Both ports serve the same certificate; the worker port may also
  // require client certificates.
  ServerTls public_tls = options.tls;
  ServerTls worker_tls = options.tls;
  worker_tls.client_ca_file = options.worker_client_ca;
  worker_tls.require_client_cert = !options.worker_listen.empty();
  if (options.worker_listen.empty()) public_tls = worker_tls;
  if (!options.worker_client_ca.empty() && options.tls.insecure) {
    return absl::InvalidArgumentError(
        "--worker_client_ca: mutual TLS needs --tls_cert/--tls_key, not --insecure");
  }
  // Uploads and checkpoints stream in 1 MiB chunks.
  if (options.max_message_bytes < (1 << 20) + (64 << 10)) {
    return absl::InvalidArgumentError(
        "--max_message_bytes: must be at least 1114112 (a 1 MiB upload chunk and its framing)");
  }
  if (options.feed.max_follow < absl::Seconds(1)) {
    return absl::InvalidArgumentError(
        "--max_stream_seconds: must be at least 1");
  }
  ASSIGN_OR_RETURN(auto public_creds, MakeServerCredentials(public_tls));
  std::shared_ptr<grpc::ServerCredentials> worker_creds;
  if (!options.worker_listen.empty()) {
    ASSIGN_OR_RETURN(worker_creds, MakeServerCredentials(worker_tls));
  }
  if (options.tls.insecure) {
    spdlog::warn("--insecure: serving PLAINTEXT on {}{}: API keys, worker "
                 "tokens and training data cross the network unencrypted; "
                 "use only on loopback or a trusted network",
                 options.listen,
                 options.worker_listen.empty() ? "" : " and " + options.worker_listen);
  }
  std::unique_ptr<Lathed> d(new Lathed());
  std::error_code ec;
  fs::create_directories(options.data_dir, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data_dir: cannot create ", options.data_dir, ": ", ec.message()));
  }
  std::string db_path = (fs::path(options.data_dir) / "lathe.db").string();
  ASSIGN_OR_RETURN(d->store_, store::Store::Open(db_path));
  ASSIGN_OR_RETURN(d->blobs_, store::BlobStore::Open(options.data_dir));
  // A crash between a blob's rename and its record's commit (or between a
  // record's delete and its blob's) leaves a blob no record names.
  ASSIGN_OR_RETURN(auto referenced, d->store_->ReferencedBlobs());
  ASSIGN_OR_RETURN(int removed, d->blobs_->RemoveUnreferenced(referenced));
  if (removed > 0) {
    spdlog::info("removed {} blob(s) that no record names (left by a crash)", removed);
  }
  for (const auto& [name, path] : options.base_models) {
    fs::path abs = fs::absolute(path, ec);
    auto model = RegisterBaseModel(*d->store_, name, abs.string());
    if (!model.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--base_model ", name, ": ", model.status().message()));
    }
    spdlog::info("base model {} -> {} ({} parameters)", name, model->path(),
                 model->parameter_count());
  }
  options.coordinator.job_defaults = options.operations.job_defaults;
  ASSIGN_OR_RETURN(d->coordinator_,
                   Coordinator::Create(*d->store_, options.coordinator));
  std::string admin_key_file = options.admin_key_file.empty()
                                   ? (fs::path(options.data_dir) / "admin.key").string()
                                   : options.admin_key_file;
  RETURN_IF_ERROR(EnsureAdminKey(*d->store_, admin_key_file));
  std::string token_file = options.worker_token_file.empty()
                               ? (fs::path(options.data_dir) / "worker.token").string()
                               : options.worker_token_file;
  ASSIGN_OR_RETURN(std::string worker_token, LoadOrCreateSecret(token_file, "wt"));
  d->auth_ = std::make_unique<Authenticator>(*d->store_, worker_token,
                                             !options.worker_client_ca.empty());
  spdlog::info("admin key in {}, worker token in {}", admin_key_file, token_file);
  EventFeedOptions feed = options.feed;
  Coordinator* coordinator = d->coordinator_.get();
  feed.present = [coordinator](v1::Job& job) { return coordinator->FillQueuePosition(job); };
  d->feed_ = std::make_unique<EventFeed>(*d->store_, *d->auth_, feed);
  d->ops_ = std::make_unique<Operations>(
      OperationDeps{d->store_.get(), d->blobs_.get(), d->coordinator_.get(),
                    d->feed_.get(), options.operations});
  ServiceDeps ctx{d->auth_.get(), d->ops_.get(), options.operations.chunk_bytes,
                  &d->shutting_down_};
  d->files_ = std::make_unique<FilesService>(ctx);
  d->fine_tuning_ = std::make_unique<FineTuningService>(ctx);
  d->worker_ = std::make_unique<WorkerService>(ctx);
  d->models_ = std::make_unique<ModelsService>(ctx);
  d->admin_ = std::make_unique<AdminService>(ctx);
  d->metrics_ = std::make_unique<ServerMetrics>(*d->store_, *d->coordinator_);
  ServerMetrics* metrics = d->metrics_.get();
  d->store_->SetCommitObserver(
      [metrics](double seconds) { metrics->ObserveCommit(seconds); });
  d->webhooks_ = std::make_unique<WebhooksService>(ctx);
  ASSIGN_OR_RETURN(d->webhook_dispatcher_,
                   WebhookDispatcher::Start(*d->store_, options.webhooks));

  grpc::EnableDefaultHealthCheckService(true);
  // Server reflection (grpc.reflection.v1alpha), beside the health service:
  // grpcurl, Postman and the like list the services and read their
  // schemas without the .proto files. It serves only the descriptors,
  // which are public; every call of the API still needs its key.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  // Keepalives detect dead peers on idle streams.
  auto configure = [&](grpc::ServerBuilder& b) {
    b.experimental().SetInterceptorCreators(RequestInterceptors(
        [metrics](const std::string& method, int code, double seconds) {
          metrics->ObserveRpc(method, code, seconds);
        }));
    b.SetMaxReceiveMessageSize(options.max_message_bytes);
    b.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    b.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    b.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    b.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  };
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, public_creds, &d->port_);
  builder.RegisterService(d->files_.get());
  builder.RegisterService(d->fine_tuning_.get());
  builder.RegisterService(d->models_.get());
  builder.RegisterService(d->admin_.get());
  builder.RegisterService(d->webhooks_.get());
  if (options.worker_listen.empty()) builder.RegisterService(d->worker_.get());
  configure(builder);
  d->server_ = builder.BuildAndStart();
  if (!d->server_ || d->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("listen: cannot bind ", options.listen));
  }
  d->worker_port_ = d->port_;
  if (!options.worker_listen.empty()) {
      grpc::ServerBuilder wb;
    wb.AddListeningPort(options.worker_listen, worker_creds, &d->worker_port_);
    wb.RegisterService(d->worker_.get());
    configure(wb);
    d->worker_server_ = wb.BuildAndStart();
    if (!d->worker_server_ || d->worker_port_ == 0) {
      return absl::UnavailableError(
          absl::StrCat("worker_listen: cannot bind ", options.worker_listen));
    }
  }
  if (!options.http_listen.empty()) {
    HttpGatewayOptions http;
    http.listen = options.http_listen;
    http.threads = options.http_threads;
    http.tls = options.tls;
    http.spool_dir = (fs::path(options.data_dir) / "spool").string();
    http.max_upload_bytes = options.operations.max_upload_bytes;
    http.max_stream = options.feed.max_follow;
    http.metrics = [metrics] { return metrics->Scrape(); };
    Lathed* self = d.get();
    http.ready = [self] { return !self->shutting_down_.load(); };
    http.observe = [metrics](const std::string& route, int status,
                             double seconds) {
      metrics->ObserveHttp(route, status, seconds);
    };
    http.asset = DashboardAsset;
    ASSIGN_OR_RETURN(d->http_, HttpGateway::Start(std::move(http), *d->auth_,
                                                  *d->ops_));
  }
  d->SetServing(true);
  Lathed* self = d.get();
  absl::Duration interval = options.sweep_interval;
  d->sweeper_ = std::thread([self, interval] {
    while (!self->shutting_down_.load()) {
      self->coordinator_->SweepExpiredLeases(absl::Now());
      // Plans are otherwise made when a worker reports idle: a busy fleet
      // would never consider preempting for a waiting job.
      self->coordinator_->ConsiderPreemption(absl::Now());
      absl::SleepFor(interval);
    }
  });
  spdlog::info("lathed serving on port {}{} over {} (data in {})", d->port_,
               d->worker_server_ ? absl::StrCat(", workers on port ", d->worker_port_) : "",
               options.tls.insecure ? "plaintext"
               : options.worker_client_ca.empty() ? "TLS"
                                                   : "TLS (workers: mutual TLS)",
               options.data_dir);
  if (d->http_) {
    spdlog::info("HTTP (OpenAI-compatible REST, /metrics, dashboard) on port {}",
                 d->http_->port());
  }
  return d;
}

void Lathed::SetServing(bool serving) {
  // The server as a whole ("") and each service by its full name, as
  // `grpc-health-probe -service=lathe.v1.FineTuning` asks.
  auto set = [serving](grpc::Server& server,
                       const std::vector<std::string>& services) {
    grpc::HealthCheckServiceInterface* health = server.GetHealthCheckService();
    health->SetServingStatus(serving);
    for (const std::string& name : services)
      health->SetServingStatus(name, serving);
  };
  std::vector<std::string> public_services = {
      "lathe.v1.Files", "lathe.v1.FineTuning", "lathe.v1.Models",
      "lathe.v1.Admin", "lathe.v1.Webhooks"};
  const std::string worker_service = "lathe.v1.Worker";
  if (worker_server_) {
    set(*worker_server_, {worker_service});
  } else {
    public_services.push_back(worker_service);
  }
  set(*server_, public_services);
}

int Lathed::http_port() const { return http_ ? http_->port() : 0; }

void Lathed::Wait() { server_->Wait(); }

void Lathed::Shutdown(absl::Duration deadline) {
  if (shutting_down_.exchange(true)) return;
  if (!server_) return;  // Start failed before serving
  // Load balancers and workers see NOT_SERVING while calls drain.
  SetServing(false);
  // WatchJob streams end now (UNAVAILABLE: re-attach), not at the deadline.
  feed_->Stop();
  if (http_) http_->Shutdown();
  // Both servers drain in parallel within the one deadline.
  auto until = absl::ToChronoTime(absl::Now() + deadline);
  std::thread workers;
  if (worker_server_) workers = std::thread([this, until] { worker_server_->Shutdown(until); });
  server_->Shutdown(until);
  if (workers.joinable()) workers.join();
  // Sends in flight end now; their deliveries stay pending for the next
  // start.
  webhook_dispatcher_->Stop();
  if (sweeper_.joinable()) sweeper_.join();
}

Lathed::~Lathed() { Shutdown(absl::Seconds(5)); }

}  // namespace lathe
