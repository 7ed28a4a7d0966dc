// lathed, assembled: the store, the blob store, the coordinator, the gRPC
// services and the lease sweeper, under one data directory.
#ifndef LATHE_SERVER_LATHED_H_
#define LATHE_SERVER_LATHED_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/server.h>

#include "absl/status/statusor.h"
#include "server/coordinator.h"
#include "server/services.h"

namespace lathe {

struct LathedOptions {
  std::string listen = "127.0.0.1:7070";     // host:port; port 0 = any
  std::string data_dir = ".lathe";           // lathe.db and blobs/
  std::map<std::string, std::string> base_models;  // name -> folder
  ServiceOptions service;
  CoordinatorOptions coordinator;
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
  // Blocks until Shutdown() is called from another thread or a signal.
  void Wait();
  // Stops accepting calls, ends streams, and returns within `deadline`.
  void Shutdown(absl::Duration deadline);

 private:
  Lathed() = default;

  std::unique_ptr<store::Store> store_;
  std::unique_ptr<store::BlobStore> blobs_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<FilesService> files_;
  std::unique_ptr<FineTuningService> fine_tuning_;
  std::unique_ptr<WorkerService> worker_;
  std::unique_ptr<ModelsService> models_;
  std::unique_ptr<grpc::Server> server_;
  std::atomic<bool> shutting_down_{false};
  std::thread sweeper_;
  int port_ = 0;
};

}  // namespace lathe

#endif  // LATHE_SERVER_LATHED_H_
