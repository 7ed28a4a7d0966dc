// lathed's HTTP port (--http_listen): the OpenAI-compatible REST API under
// /v1 (files, fine-tuning jobs with their events and checkpoints, models,
// and Lathe's adapter and checkpoint downloads), /healthz, /readyz,
// /metrics and the dashboard. A thin adapter over the same transport-free
// operations the gRPC services call (server/operations/operations.h): it
// authenticates the `Authorization: Bearer` key (server/auth.h), calls the
// operation, and converts the answer to OpenAI's JSON (openai_json.h). No
// rule is written here twice.
//
// cpp-httplib (Debian's libcpp-httplib-dev) serves it, over TLS with
// lathed's certificate unless insecure.
#ifndef LATHE_SERVER_HTTP_HTTP_GATEWAY_H_
#define LATHE_SERVER_HTTP_HTTP_GATEWAY_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls.h"
#include "server/auth.h"
#include "server/operations/operations.h"

namespace httplib {
class ContentReader;
struct Request;
struct Response;
class Server;
}  // namespace httplib

namespace lathe {

struct HttpGatewayOptions {
  std::string listen;  // host:port; port 0 = any
  ServerTls tls;       // certificate and key, or insecure
  // Where an upload is spooled while it arrives (multipart bodies carry no
  // size or hash ahead of the file, which the upload session needs).
  std::string spool_dir;
  int64_t max_upload_bytes = 1LL << 30;
  int threads = 64;  // requests served at once (event streams hold one)
  // Event streams open at once (each holds a thread); past it a stream is
  // RESOURCE_EXHAUSTED (429) and the client pages the events instead.
  // 0: half the threads.
  int max_streams = 0;
  // An event stream (GET .../events?stream=true) ends after this long:
  // the client re-attaches with Last-Event-ID.
  absl::Duration max_stream = absl::Minutes(30);
  // The body of /metrics (Prometheus text format); 404 without.
  std::function<std::string()> metrics;
  // /readyz: 200 while this says true.
  std::function<bool()> ready;
  // A finished request: method route ("GET /v1/files/{id}"), HTTP status,
  // seconds it took; for the metrics.
  std::function<void(const std::string& route, int status, double seconds)>
      observe;
  // The dashboard's files: path under / -> (content type, bytes); empty
  // serves none.
  std::function<bool(const std::string& path, std::string* type,
                     std::string* body)>
      asset;
};

class HttpGateway {
 public:
  // Binds and starts serving. `auth` and `ops` must outlive the gateway.
  // INVALID_ARGUMENT for bad TLS files (naming the flag), UNAVAILABLE when
  // the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpGateway>> Start(
      HttpGatewayOptions options, const Authenticator& auth, Operations& ops);
  ~HttpGateway();

  int port() const { return port_; }
  // Stops accepting, ends event streams, and joins the server's thread.
  void Shutdown();

 private:
  HttpGateway(HttpGatewayOptions options, const Authenticator& auth,
              Operations& ops);
  void Routes();
  // POST /v1/files: the multipart body spooled (hashed, within
  // max_upload_bytes), then fed to an upload session.
  absl::Status Upload(const Caller& caller, const httplib::Request& req,
                      httplib::Response& res,
                      const httplib::ContentReader& reader);
  // GET /v1/fine_tuning/jobs/{id}/events?stream=true: server-sent events
  // from the job's feed, as WatchJob streams them.
  absl::Status StreamEvents(const Caller& caller, const httplib::Request& req,
                            httplib::Response& res);

  const HttpGatewayOptions options_;
  const Authenticator& auth_;
  Operations& ops_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> streams_{0};  // event streams open
  int port_ = 0;
};

}  // namespace lathe

#endif  // LATHE_SERVER_HTTP_HTTP_GATEWAY_H_
