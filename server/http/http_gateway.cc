#include "server/http/http_gateway.h"

#include <fcntl.h>
#include <httplib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/echo.h"
#include "common/ids.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "server/http/openai_json.h"
#include "spdlog/spdlog.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;
using httplib::Request;
using httplib::Response;
using openai::Json;

void SendJson(Response& res, int status, const Json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

void SendError(Response& res, const absl::Status& status) {
  SendJson(res, openai::HttpStatusOf(status), openai::ErrorBody(status));
}

// The Authorization header's value (nullopt without one).
std::optional<std::string> AuthorizationOf(const Request& req) {
  if (!req.has_header("Authorization")) return std::nullopt;
  return req.get_header_value("Authorization");
}

absl::StatusOr<Caller> UserOf(const Authenticator& auth, const Request& req) {
  std::optional<std::string> value = AuthorizationOf(req);
  return value ? auth.User(absl::string_view(*value)) : auth.User(std::nullopt);
}

std::string Param(const Request& req, const std::string& name) {
  return req.has_param(name) ? req.get_param_value(name) : "";
}

// `name`, an integer query parameter; `fallback` when absent.
absl::StatusOr<int> IntParam(const Request& req, const std::string& name,
                             int fallback) {
  if (!req.has_param(name)) return fallback;
  int v = 0;
  if (!absl::SimpleAtoi(req.get_param_value(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": \"", Echo(req.get_param_value(name)), "\" is not an integer"));
  }
  return v;
}

// Serves the file at `path` as the body, streamed from disk (Range
// requests are answered by cpp-httplib from the same provider).
absl::Status ServeFile(Response& res, const std::string& path,
                       const std::string& type) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("file: ", path, " is gone"));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError("file: cannot read its size");
  }
  res.set_content_provider(
      static_cast<size_t>(st.st_size), type,
      [fd](size_t offset, size_t length, httplib::DataSink& sink) {
        std::string buf(std::min<size_t>(length, 1 << 20), '\0');
        ssize_t n =
            ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(offset));
        if (n <= 0) return false;
        return sink.write(buf.data(), static_cast<size_t>(n));
      },
      [fd](bool) { ::close(fd); });
  return absl::OkStatus();
}

// A download's files as a list, each with the URL of its bytes.
Json FileList(const std::vector<Download>& files, const std::string& base) {
  Json data = Json::array();
  for (const Download& d : files) {
    data.push_back({{"object", "lathe.result_file"},
                    {"name", d.file.name()},
                    {"bytes", d.file.bytes()},
                    {"sha256", d.file.sha256()},
                    {"url", absl::StrCat(base, "/", d.file.name())}});
  }
  return {{"object", "list"}, {"data", data}, {"has_more", false}};
}

absl::Status ServeOneOf(Response& res, const std::vector<Download>& files,
                        const std::string& name) {
  for (const Download& d : files) {
    if (d.file.name() == name) {
      res.set_header(
          "Content-Disposition",
          absl::StrCat("attachment; filename=\"", d.file.name(), "\""));
      res.set_header("ETag", absl::StrCat("\"", d.file.sha256(), "\""));
      res.set_header("X-Lathe-SHA256", d.file.sha256());
      return ServeFile(res, d.path, "application/octet-stream");
    }
  }
  return absl::NotFoundError(
      absl::StrCat("name: no file \"", Echo(name), "\" in this download"));
}

// "host:port" (host may be [v6]).
absl::StatusOr<std::pair<std::string, int>> SplitListen(const std::string& s) {
  size_t colon = s.rfind(':');
  int port = -1;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(s.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_listen: \"", Echo(s),
                     "\" is not host:port, e.g. 127.0.0.1:8080"));
  }
  std::string host = s.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return std::make_pair(host, port);
}

}  // namespace

HttpGateway::HttpGateway(HttpGatewayOptions options, const Authenticator& auth,
                         Operations& ops)
    : options_(std::move(options)), auth_(auth), ops_(ops) {}

absl::StatusOr<std::unique_ptr<HttpGateway>> HttpGateway::Start(
    HttpGatewayOptions options, const Authenticator& auth, Operations& ops) {
  ASSIGN_OR_RETURN(auto where, SplitListen(options.listen));
  std::unique_ptr<HttpGateway> g(
      new HttpGateway(std::move(options), auth, ops));
  const ServerTls& tls = g->options_.tls;
  if (tls.insecure) {
    g->server_ = std::make_unique<httplib::Server>();
  } else {
    auto ssl = std::make_unique<httplib::SSLServer>(tls.cert_file.c_str(),
                                                    tls.key_file.c_str());
    if (!ssl->is_valid()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls_cert/--tls_key: the HTTP port cannot load ",
                       tls.cert_file, " and ", tls.key_file));
    }
    g->server_ = std::move(ssl);
  }
  if (!g->options_.spool_dir.empty()) {
    std::error_code ec;
    fs::create_directories(g->options_.spool_dir, ec);
  }
  int threads = std::max(4, g->options_.threads);
  g->server_->new_task_queue = [threads] {
    return new httplib::ThreadPool(threads);
  };
  // A whole multipart upload; JSON bodies are far smaller.
  g->server_->set_payload_max_length(
      static_cast<size_t>(g->options_.max_upload_bytes) + (1 << 20));
  g->Routes();
  if (where.second == 0) {
    g->port_ = g->server_->bind_to_any_port(where.first);
    if (g->port_ <= 0) g->port_ = 0;
  } else if (g->server_->bind_to_port(where.first, where.second)) {
    g->port_ = where.second;
  }
  if (g->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("--http_listen: cannot bind ", g->options_.listen));
  }
  httplib::Server* server = g->server_.get();
  g->thread_ = std::thread([server] { server->listen_after_bind(); });
  return g;
}

HttpGateway::~HttpGateway() { Shutdown(); }

void HttpGateway::Shutdown() {
  if (stopping_.exchange(true)) return;
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

void HttpGateway::Routes() {
  httplib::Server& s = *server_;
  // Every route: timed, observed by route name, its errors as OpenAI's.
  using Body = std::function<absl::Status(const Request&, Response&)>;
  auto route = [this](std::string name, Body body) {
    return [this, name = std::move(name), body = std::move(body)](
               const Request& req, Response& res) {
      absl::Time start = absl::Now();
      absl::Status st = body(req, res);
      if (!st.ok()) SendError(res, st);
      if (options_.observe) {
        options_.observe(name, res.status,
                         absl::ToDoubleSeconds(absl::Now() - start));
      }
    };
  };
  // The caller first, from the Bearer key.
  using Authed =
      std::function<absl::Status(const Caller&, const Request&, Response&)>;
  auto authed = [this, route](std::string name, Authed body) {
    return route(std::move(name), [this, body = std::move(body)](
                                      const Request& req, Response& res) {
      ASSIGN_OR_RETURN(Caller caller, UserOf(auth_, req));
      return body(caller, req, res);
    });
  };
  // An operation answering a JSON object.
  using JsonOp =
      std::function<absl::StatusOr<Json>(const Caller&, const Request&)>;
  auto json = [authed](std::string name, JsonOp op) {
    return authed(std::move(name),
                  [op = std::move(op)](const Caller& c, const Request& req,
                                       Response& res) {
                    ASSIGN_OR_RETURN(Json body, op(c, req));
                    SendJson(res, 200, body);
                    return absl::OkStatus();
                  });
  };

  s.Get("/healthz", route("GET /healthz", [](const Request&, Response& res) {
          res.set_content("ok\n", "text/plain");
          return absl::OkStatus();
        }));
  s.Get("/readyz", route("GET /readyz", [this](const Request&, Response& res) {
          bool ready =
              !stopping_.load() && (!options_.ready || options_.ready());
          res.status = ready ? 200 : 503;
          res.set_content(ready ? "ready\n" : "not ready\n", "text/plain");
          return absl::OkStatus();
        }));
  s.Get("/metrics",
        route("GET /metrics", [this](const Request&, Response& res) {
          if (!options_.metrics) return absl::NotFoundError("no metrics here");
          res.set_content(options_.metrics(),
                          "text/plain; version=0.0.4; charset=utf-8");
          return absl::OkStatus();
        }));

  // --- Files ---------------------------------------------------------------
  s.Post("/v1/files", [this, route](const Request& req, Response& res,
                                    const httplib::ContentReader& reader) {
    route("POST /v1/files", [&](const Request&, Response&) {
      ASSIGN_OR_RETURN(Caller caller, UserOf(auth_, req));
      return Upload(caller, req, res, reader);
    })(req, res);
  });
  s.Get(
      "/v1/files",
      json("GET /v1/files",
           [this](const Caller& c, const Request& req) -> absl::StatusOr<Json> {
             std::string order = Param(req, "order");
             if (!order.empty() && order != "desc") {
               return absl::InvalidArgumentError(
                   "order: only \"desc\" (newest first) is supported");
             }
             v1::ListFilesRequest r;
             ASSIGN_OR_RETURN(int limit, IntParam(req, "limit", 20));
             r.set_limit(limit);
             r.set_after(Param(req, "after"));
             r.set_purpose(Param(req, "purpose"));
             ASSIGN_OR_RETURN(auto page, ops_.files.ListFiles(c, r));
             Json data = Json::array();
             for (const auto& f : page.data())
               data.push_back(openai::FileObject(f));
             return openai::ListObject(std::move(data), page.has_more(), true);
           }));
  s.Get(
      R"(/v1/files/([^/]+))",
      json("GET /v1/files/{id}",
           [this](const Caller& c, const Request& req) -> absl::StatusOr<Json> {
             v1::GetFileRequest r;
             r.set_file_id(req.matches[1]);
             ASSIGN_OR_RETURN(v1::File f, ops_.files.GetFile(c, r));
             return openai::FileObject(f);
           }));
  s.Delete(
      R"(/v1/files/([^/]+))",
      json("DELETE /v1/files/{id}",
           [this](const Caller& c, const Request& req) -> absl::StatusOr<Json> {
             v1::DeleteFileRequest r;
             r.set_file_id(req.matches[1]);
             ASSIGN_OR_RETURN(auto d, ops_.files.DeleteFile(c, r));
             return Json{
                 {"object", "file"}, {"id", d.id()}, {"deleted", d.deleted()}};
           }));
  s.Get(R"(/v1/files/([^/]+)/content)",
        authed("GET /v1/files/{id}/content",
               [this](const Caller& c, const Request& req, Response& res) {
                 v1::DownloadFileRequest r;
                 r.set_file_id(req.matches[1]);
                 ASSIGN_OR_RETURN(std::string path,
                                  ops_.files.DownloadFile(c, r));
                 return ServeFile(res, path, "application/octet-stream");
               }));

  // --- Fine-tuning jobs ----------------------------------------------------
  s.Post(
      "/v1/fine_tuning/jobs",
      json("POST /v1/fine_tuning/jobs",
           [this](const Caller& c, const Request& req) -> absl::StatusOr<Json> {
             ASSIGN_OR_RETURN(v1::CreateJobRequest r,
                              openai::CreateJobRequestFromJson(req.body));
             // The SDKs' retries carry one Idempotency-Key: one job.
             if (r.idempotency_key().empty() &&
                 req.has_header("Idempotency-Key")) {
               r.set_idempotency_key(req.get_header_value("Idempotency-Key"));
             }
             ASSIGN_OR_RETURN(v1::Job job, ops_.jobs.CreateJob(c, r));
             return openai::JobObject(job);
           }));
  s.Get(
      "/v1/fine_tuning/jobs",
      json("GET /v1/fine_tuning/jobs",
           [this](const Caller& c, const Request& req) -> absl::StatusOr<Json> {
             v1::ListJobsRequest r;
             ASSIGN_OR_RETURN(int limit, IntParam(req, "limit", 20));
             r.set_limit(limit);
             r.set_after(Param(req, "after"));
             if (std::string st = Param(req, "status"); !st.empty()) {
               ASSIGN_OR_RETURN(v1::JobStatus status,
                                openai::ParseStatus(st, "status"));
               r.set_status(status);
             }
             // metadata[key]=value, as the SDKs write an object in a query.
             for (const auto& [key, value] : req.params) {
               if (absl::StartsWith(key, "metadata[") &&
                   absl::EndsWith(key, "]")) {
                 (*r.mutable_metadata())[key.substr(9, key.size() - 10)] =
                     value;
               }
             }
             ASSIGN_OR_RETURN(auto page, ops_.jobs.ListJobs(c, r));
             Json data = Json::array();
             for (const auto& j : page.data())
               data.push_back(openai::JobObject(j));
             return openai::ListObject(std::move(data), page.has_more());
           }));
  s.Get(
      R"(/v1/fine_tuning/jobs/([^/]+))",
      json("GET /v1/fine_tuning/jobs/{id}",
           [this](const Caller& c, const Request& req) -> absl::StatusOr<Json> {
             v1::GetJobRequest r;
             r.set_job_id(req.matches[1]);
             ASSIGN_OR_RETURN(v1::Job job, ops_.jobs.GetJob(c, r));
             return openai::JobObject(job);
           }));
  s.Post(
      R"(/v1/fine_tuning/jobs/([^/]+)/(cancel|pause|resume))",
      json("POST /v1/fine_tuning/jobs/{id}/{action}",
           [this](const Caller& c, const Request& req) -> absl::StatusOr<Json> {
             const std::string id = req.matches[1];
             const std::string action = req.matches[2];
             absl::StatusOr<v1::Job> job;
             if (action == "cancel") {
               v1::CancelJobRequest r;
               r.set_job_id(id);
               job = ops_.jobs.CancelJob(c, r);
             } else if (action == "pause") {
               v1::PauseJobRequest r;
               r.set_job_id(id);
               job = ops_.jobs.PauseJob(c, r);
             } else {
               v1::ResumeJobRequest r;
               r.set_job_id(id);
               job = ops_.jobs.ResumeJob(c, r);
             }
             RETURN_IF_ERROR(job.status());
             return openai::JobObject(*job);
           }));
  s.Get(R"(/v1/fine_tuning/jobs/([^/]+)/events)",
        authed("GET /v1/fine_tuning/jobs/{id}/events",
               [this](const Caller& c, const Request& req, Response& res) {
                 if (Param(req, "stream") == "true")
                   return StreamEvents(c, req, res);
                 v1::ListJobEventsRequest r;
                 r.set_job_id(req.matches[1]);
                 r.set_after(Param(req, "after"));
                 ASSIGN_OR_RETURN(int limit, IntParam(req, "limit", 20));
                 r.set_limit(limit);
                 ASSIGN_OR_RETURN(auto page, ops_.jobs.ListJobEvents(c, r));
                 Json data = Json::array();
                 for (const auto& e : page.data())
                   data.push_back(openai::EventObject(e));
                 SendJson(res, 200,
                          openai::ListObject(std::move(data), page.has_more()));
                 return absl::OkStatus();
               }));
  s.Get(
      R"(/v1/fine_tuning/jobs/([^/]+)/checkpoints)",
      json("GET /v1/fine_tuning/jobs/{id}/checkpoints",
           [this](const Caller& c, const Request& req) -> absl::StatusOr<Json> {
             v1::GetJobRequest g;
             g.set_job_id(req.matches[1]);
             ASSIGN_OR_RETURN(v1::Job job, ops_.jobs.GetJob(c, g));
             v1::ListJobCheckpointsRequest r;
             r.set_job_id(job.id());
             ASSIGN_OR_RETURN(auto all, ops_.jobs.ListJobCheckpoints(c, r));
             ASSIGN_OR_RETURN(int limit, IntParam(req, "limit", 10));
             if (limit < 1 || limit > 100) {
               return absl::InvalidArgumentError("limit: must be 1..100");
             }
             // Newest first, as OpenAI lists them; `after` is an id.
             std::vector<const v1::Checkpoint*> order;
             for (const auto& ck : all.data()) order.push_back(&ck);
             std::reverse(order.begin(), order.end());
             size_t begin = 0;
             if (std::string after = Param(req, "after"); !after.empty()) {
               auto it = std::find_if(
                   order.begin(), order.end(),
                   [&](const v1::Checkpoint* ck) { return ck->id() == after; });
               if (it == order.end()) {
                 return absl::InvalidArgumentError(
                     absl::StrCat("after: \"", Echo(after),
                                  "\" is not a checkpoint of ", job.id()));
               }
               begin = static_cast<size_t>(it - order.begin()) + 1;
             }
             size_t end =
                 std::min(order.size(), begin + static_cast<size_t>(limit));
             Json data = Json::array();
             for (size_t i = begin; i < end; ++i) {
               data.push_back(openai::CheckpointObject(*order[i], job));
             }
             return openai::ListObject(std::move(data), end < order.size(),
                                       true);
           }));
  // Lathe's downloads: the adapter's (or a checkpoint's) files, listed
  // with their sizes and SHA-256, then each by name.
  s.Get(
      R"(/v1/fine_tuning/jobs/([^/]+)/adapter)",
      json("GET /v1/fine_tuning/jobs/{id}/adapter",
           [this](const Caller& c, const Request& req) -> absl::StatusOr<Json> {
             v1::DownloadAdapterRequest r;
             r.set_job_id(req.matches[1]);
             ASSIGN_OR_RETURN(auto files, ops_.jobs.DownloadAdapter(c, r));
             return FileList(files, absl::StrCat("/v1/fine_tuning/jobs/",
                                                 r.job_id(), "/adapter"));
           }));
  s.Get(R"(/v1/fine_tuning/jobs/([^/]+)/adapter/([^/]+))",
        authed("GET /v1/fine_tuning/jobs/{id}/adapter/{name}",
               [this](const Caller& c, const Request& req, Response& res) {
                 v1::DownloadAdapterRequest r;
                 r.set_job_id(req.matches[1]);
                 ASSIGN_OR_RETURN(auto files, ops_.jobs.DownloadAdapter(c, r));
                 return ServeOneOf(res, files, req.matches[2]);
               }));
  auto checkpoint_request =
      [](const Request& req) -> absl::StatusOr<v1::DownloadCheckpointRequest> {
    v1::DownloadCheckpointRequest r;
    r.set_job_id(req.matches[1]);
    int64_t step = 0;
    if (!absl::SimpleAtoi(std::string(req.matches[2]), &step) || step < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("step_number: \"", Echo(std::string(req.matches[2])),
                       "\" is not a step number"));
    }
    r.set_step_number(step);
    return r;
  };
  s.Get(R"(/v1/fine_tuning/jobs/([^/]+)/checkpoints/([^/]+)/files)",
        json("GET /v1/fine_tuning/jobs/{id}/checkpoints/{step}/files",
             [this, checkpoint_request](
                 const Caller& c, const Request& req) -> absl::StatusOr<Json> {
               ASSIGN_OR_RETURN(auto r, checkpoint_request(req));
               ASSIGN_OR_RETURN(auto files, ops_.jobs.DownloadCheckpoint(c, r));
               return FileList(files, absl::StrCat("/v1/fine_tuning/jobs/",
                                                   r.job_id(), "/checkpoints/",
                                                   r.step_number(), "/files"));
             }));
  s.Get(R"(/v1/fine_tuning/jobs/([^/]+)/checkpoints/([^/]+)/files/([^/]+))",
        authed("GET /v1/fine_tuning/jobs/{id}/checkpoints/{step}/files/{name}",
               [this, checkpoint_request](const Caller& c, const Request& req,
                                          Response& res) {
                 ASSIGN_OR_RETURN(auto r, checkpoint_request(req));
                 ASSIGN_OR_RETURN(auto files,
                                  ops_.jobs.DownloadCheckpoint(c, r));
                 return ServeOneOf(res, files, req.matches[3]);
               }));

  // --- Models --------------------------------------------------------------
  s.Get("/v1/models",
        json("GET /v1/models",
             [this](const Caller& c, const Request&) -> absl::StatusOr<Json> {
               ASSIGN_OR_RETURN(auto all, ops_.models.ListModels(c, {}));
               Json data = Json::array();
               for (const auto& m : all.data())
                 data.push_back(openai::ModelObject(m));
               return Json{{"object", "list"}, {"data", data}};
             }));
  s.Get(
      R"(/v1/models/(.+))",
      json("GET /v1/models/{id}",
           [this](const Caller& c, const Request& req) -> absl::StatusOr<Json> {
             v1::GetModelRequest r;
             r.set_model_id(req.matches[1]);
             ASSIGN_OR_RETURN(v1::Model m, ops_.models.GetModel(c, r));
             return openai::ModelObject(m);
           }));
  s.Delete(
      R"(/v1/models/(.+))",
      json("DELETE /v1/models/{id}",
           [this](const Caller& c, const Request& req) -> absl::StatusOr<Json> {
             v1::DeleteModelRequest r;
             r.set_model_id(req.matches[1]);
             ASSIGN_OR_RETURN(auto d, ops_.models.DeleteModel(c, r));
             return Json{
                 {"object", "model"}, {"id", d.id()}, {"deleted", d.deleted()}};
           }));

  // --- The dashboard -------------------------------------------------------
  s.Get(
      R"(/(|dashboard|assets/[A-Za-z0-9._-]+))",
      route("GET /dashboard", [this](const Request& req, Response& res) {
        std::string type, body;
        std::string path = req.matches[1];
        if (path.empty() || path == "dashboard") path = "index.html";
        if (!options_.asset || !options_.asset(path, &type, &body)) {
          return absl::NotFoundError(absl::StrCat("no such page: ", req.path));
        }
        res.set_header("Cache-Control", "no-cache");
        res.set_content(body, type);
        return absl::OkStatus();
      }));

  s.set_error_handler([](const Request& req, Response& res) {
    // Routes answer their own errors; this is for paths that match none.
    if (res.status == 404 && res.body.empty()) {
      SendError(res, absl::NotFoundError(absl::StrCat(
                         "no route ", req.method, " ", Echo(req.path),
                         " (the API is under /v1, as OpenAI's)")));
      res.status = 404;
    }
  });
  s.set_exception_handler([](const Request&, Response& res,
                             std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    SendError(res, absl::InternalError(absl::StrCat("internal error: ", what)));
  });
}

}  // namespace lathe

namespace lathe {

absl::Status HttpGateway::Upload(const Caller& caller, const Request& req,
                                 Response& res,
                                 const httplib::ContentReader& reader) {
  if (!req.is_multipart_form_data()) {
    return absl::InvalidArgumentError(
        "body: must be multipart/form-data with the JSONL as \"file\" and "
        "purpose=fine-tune");
  }
  // The slot first: a client over its limit is refused before it sends.
  ASSIGN_OR_RETURN(auto session, ops_.files.StartUpload(caller));
  const std::string spool =
      (fs::path(options_.spool_dir) / NewId("upload-")).string();
  absl::Cleanup remove = [&spool] {
    std::error_code ec;
    fs::remove(spool, ec);
  };
  std::ofstream out(spool, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError("cannot open the upload's spool file");
  Sha256 hash;
  std::string part, purpose, filename;
  bool have_file = false;
  int64_t size = 0;
  absl::Status error;
  bool whole = reader(
      [&](const httplib::MultipartFormData& f) {
        part = f.name;
        if (part == "file") {
          if (have_file) {
            error = absl::InvalidArgumentError("file: sent twice");
            return false;
          }
          have_file = true;
          filename = f.filename;
        }
        return true;
      },
      [&](const char* data, size_t n) {
        if (part == "file") {
          size += static_cast<int64_t>(n);
          if (size > options_.max_upload_bytes) {
            error = absl::ResourceExhaustedError(
                absl::StrCat("file: larger than max_upload_bytes (",
                             options_.max_upload_bytes, " bytes)"));
            return false;
          }
          out.write(data, static_cast<std::streamsize>(n));
          hash.Update(absl::string_view(data, n));
        } else if (part == "purpose") {
          purpose.append(data, n);
          if (purpose.size() > 64) {
            error =
                absl::InvalidArgumentError("purpose: must be \"fine-tune\"");
            return false;
          }
        }
        // Other fields (OpenAI's expires_after) do not apply: files are
        // kept until deleted.
        return true;
      });
  out.close();
  if (!error.ok()) return error;
  if (!whole) {
    // A client that went away reads no answer; one that sent a broken
    // body reads what to fix. Either way nothing is stored.
    session->Abort().IgnoreError();
    return absl::InvalidArgumentError(
        "body: the multipart body is malformed or ended early; nothing "
        "stored (send the JSONL as the field \"file\" and purpose=fine-tune)");
  }
  if (!out) return absl::InternalError("cannot write the upload's spool file");
  if (!have_file) {
    return absl::InvalidArgumentError(
        "file: missing (send the JSONL as the multipart field \"file\")");
  }
  v1::UploadFileHeader header;
  header.set_filename(filename);
  header.set_purpose(purpose);
  header.set_bytes(size);
  header.set_sha256(hash.HexDigest());
  RETURN_IF_ERROR(session->Begin(header));
  std::ifstream in(spool, std::ios::binary);
  std::string chunk(1 << 20, '\0');
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    std::streamsize n = in.gcount();
    if (n <= 0) break;
    RETURN_IF_ERROR(
        session->Add(absl::string_view(chunk.data(), static_cast<size_t>(n))));
  }
  ASSIGN_OR_RETURN(v1::File file, session->Finish());
  SendJson(res, 200, openai::FileObject(file));
  return absl::OkStatus();
}

absl::Status HttpGateway::StreamEvents(const Caller& caller, const Request& req,
                                       Response& res) {
  struct Stream {
    v1::WatchJobRequest request;
    absl::Time started;
  };
  auto stream = std::make_shared<Stream>();
  stream->request.set_job_id(req.matches[1]);
  std::string after = Param(req, "after");
  if (after.empty() && req.has_header("Last-Event-ID")) {
    after = req.get_header_value("Last-Event-ID");
  }
  stream->request.set_after(after);
  stream->started = absl::Now();
  const int max_streams = options_.max_streams > 0
                              ? options_.max_streams
                              : std::max(1, options_.threads / 2);
  if (streams_.fetch_add(1) >= max_streams) {
    streams_.fetch_sub(1);
    return absl::ResourceExhaustedError(absl::StrCat(
        "stream: ", max_streams,
        " event streams are open on this server (lathed --http_threads / 2); "
        "page GET .../events with `after` instead, or retry later"));
  }
  // Released when the stream ends, however it ends.
  std::shared_ptr<void> slot(nullptr, [this](void*) { streams_.fetch_sub(1); });
  // Checked before the stream starts, so a bad id or cursor is an error
  // status and not an event.
  v1::ListJobEventsRequest probe;
  probe.set_job_id(stream->request.job_id());
  probe.set_after(after);
  probe.set_limit(1);
  RETURN_IF_ERROR(ops_.jobs.ListJobEvents(caller, probe).status());
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, caller, stream, slot](size_t, httplib::DataSink& sink) {
        auto send = [&sink](const std::string& s) {
          return sink.write(s.data(), s.size());
        };
        if (stopping_.load() ||
            absl::Now() - stream->started > options_.max_stream) {
          // The client re-attaches with the last id it saw.
          send("event: reattach\ndata: {}\n\n");
          sink.done();
          return true;
        }
        auto batch = ops_.jobs.NextJobEvents(caller, stream->request,
                                             absl::Now() + absl::Seconds(2));
        if (!batch.ok()) {
          send(absl::StrCat("event: error\ndata: ",
                            openai::ErrorBody(batch.status()).dump(), "\n\n"));
          sink.done();
          return true;
        }
        bool ok = true;
        for (const auto& u : batch->updates) {
          if (u.has_event()) {
            stream->request.set_after(u.event().id());
            ok = ok && send(absl::StrCat(
                           "id: ", u.event().id(), "\nevent: event\ndata: ",
                           openai::EventObject(u.event()).dump(), "\n\n"));
          }
          if (u.has_job()) {
            ok = ok &&
                 send(absl::StrCat("event: job\ndata: ",
                                   openai::JobObject(u.job()).dump(), "\n\n"));
          }
        }
        if (batch->updates.empty()) ok = send(": keepalive\n\n");
        if (!ok) return false;  // the client went away
        if (batch->finished) {
          send("event: done\ndata: {}\n\n");
          sink.done();
        }
        return true;
      });
  return absl::OkStatus();
}

}  // namespace lathe
