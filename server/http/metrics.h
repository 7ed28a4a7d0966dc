// lathed's Prometheus metrics (prometheus-cpp, text exposition format),
// served at /metrics on the HTTP port:
// - counted as they happen: RPCs by method and code with their latency,
//   HTTP requests by route and status with their latency, SQLite commit
//   latency;
// - read at each scrape: jobs by status and project, queue depth and the
//   oldest wait, workers by state with their device memory, each running
//   job's step, loss, token accuracy and tokens/s (its newest metrics
//   event), and the blob store's bytes.
//
// Thread-safe.
#ifndef LATHE_SERVER_HTTP_METRICS_H_
#define LATHE_SERVER_HTTP_METRICS_H_

#include <memory>
#include <string>

#include "server/coordinator.h"
#include "server/store/store.h"

namespace prometheus {
class Registry;
template <typename T>
class Family;
class Counter;
class Histogram;
}  // namespace prometheus

namespace lathe {

class ServerMetrics {
 public:
  // `store` and `coordinator` must outlive this.
  ServerMetrics(store::Store& store, Coordinator& coordinator);
  ~ServerMetrics();

  // A finished gRPC call: its full method name ("/lathe.v1.Files/Upload"),
  // status code (grpc::StatusCode's number) and duration.
  void ObserveRpc(const std::string& method, int code, double seconds);
  // A finished HTTP request: its route ("GET /v1/files/{id}").
  void ObserveHttp(const std::string& route, int status, double seconds);
  void ObserveCommit(double seconds);

  // Every metric, in the text format.
  std::string Scrape();

 private:
  store::Store& store_;
  Coordinator& coordinator_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* rpc_total_;
  prometheus::Family<prometheus::Histogram>* rpc_seconds_;
  prometheus::Family<prometheus::Counter>* http_total_;
  prometheus::Family<prometheus::Histogram>* http_seconds_;
  prometheus::Histogram* commit_seconds_;
};

}  // namespace lathe

#endif  // LATHE_SERVER_HTTP_METRICS_H_
