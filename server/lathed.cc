#include "server/lathed.h"

#include <filesystem>

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace lathe {

namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<Lathed>> Lathed::Start(LathedOptions options) {
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
  d->auth_ = std::make_unique<Authenticator>(*d->store_, worker_token);
  spdlog::info("admin key in {}, worker token in {}", admin_key_file, token_file);
  ServerContext ctx{d->auth_.get(), d->store_.get(), d->blobs_.get(),
                    d->coordinator_.get(), options.service, &d->shutting_down_};
  d->files_ = std::make_unique<FilesService>(ctx);
  d->fine_tuning_ = std::make_unique<FineTuningService>(ctx);
  d->worker_ = std::make_unique<WorkerService>(ctx);
  d->models_ = std::make_unique<ModelsService>(ctx);
  d->admin_ = std::make_unique<AdminService>(ctx);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(),
                           &d->port_);
  builder.RegisterService(d->files_.get());
  builder.RegisterService(d->fine_tuning_.get());
  builder.RegisterService(d->worker_.get());
  builder.RegisterService(d->models_.get());
  builder.RegisterService(d->admin_.get());
  builder.SetMaxReceiveMessageSize(16 << 20);
  // Detect dead peers on idle streams.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             5000);
  d->server_ = builder.BuildAndStart();
  if (!d->server_ || d->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("listen: cannot bind ", options.listen));
  }
  d->server_->GetHealthCheckService()->SetServingStatus(true);
  Lathed* self = d.get();
  absl::Duration interval = options.sweep_interval;
  d->sweeper_ = std::thread([self, interval] {
    while (!self->shutting_down_.load()) {
      self->coordinator_->SweepExpiredLeases(absl::Now());
      absl::SleepFor(interval);
    }
  });
  spdlog::info("lathed serving on port {} (data in {})", d->port_,
               options.data_dir);
  return d;
}

void Lathed::Wait() { server_->Wait(); }

void Lathed::Shutdown(absl::Duration deadline) {
  if (shutting_down_.exchange(true)) return;
  // Load balancers and workers see NOT_SERVING while calls drain.
  server_->GetHealthCheckService()->SetServingStatus(false);
  server_->Shutdown(absl::ToChronoTime(absl::Now() + deadline));
  if (sweeper_.joinable()) sweeper_.join();
}

Lathed::~Lathed() { Shutdown(absl::Seconds(5)); }

}  // namespace lathe
