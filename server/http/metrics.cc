#include "server/http/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "common/ids.h"
#include "spdlog/spdlog.h"

namespace lathe {
namespace {

const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
      0.1,    0.25,  0.5,    1,     2.5,  5,     10};
  return *b;
}

}  // namespace

ServerMetrics::ServerMetrics(store::Store& store, Coordinator& coordinator)
    : store_(store),
      coordinator_(coordinator),
      registry_(std::make_shared<prometheus::Registry>()) {
  rpc_total_ = &prometheus::BuildCounter()
                    .Name("lathe_rpc_requests_total")
                    .Help("gRPC calls served, by method and status code")
                    .Register(*registry_);
  rpc_seconds_ = &prometheus::BuildHistogram()
                      .Name("lathe_rpc_duration_seconds")
                      .Help("gRPC call latency (streams: their whole life)")
                      .Register(*registry_);
  http_total_ = &prometheus::BuildCounter()
                     .Name("lathe_http_requests_total")
                     .Help("HTTP requests served, by route and status")
                     .Register(*registry_);
  http_seconds_ = &prometheus::BuildHistogram()
                       .Name("lathe_http_request_duration_seconds")
                       .Help("HTTP request latency, by route")
                       .Register(*registry_);
  commit_seconds_ = &prometheus::BuildHistogram()
                         .Name("lathe_sqlite_commit_seconds")
                         .Help("SQLite COMMIT latency (the fsync)")
                         .Register(*registry_)
                         .Add({}, LatencyBuckets());
}

ServerMetrics::~ServerMetrics() = default;

void ServerMetrics::ObserveRpc(const std::string& method, int code,
                               double seconds) {
  rpc_total_
      ->Add({{"method", method},
             {"code",
              absl::StatusCodeToString(static_cast<absl::StatusCode>(code))}})
      .Increment();
  rpc_seconds_->Add({{"method", method}}, LatencyBuckets()).Observe(seconds);
}

void ServerMetrics::ObserveHttp(const std::string& route, int status,
                                double seconds) {
  http_total_->Add({{"route", route}, {"status", std::to_string(status)}})
      .Increment();
  http_seconds_->Add({{"route", route}}, LatencyBuckets()).Observe(seconds);
}

void ServerMetrics::ObserveCommit(double seconds) {
  commit_seconds_->Observe(seconds);
}

std::string ServerMetrics::Scrape() {
  // What is read at the scrape lives in a registry of its own, made anew.
  prometheus::Registry now;
  auto& jobs = prometheus::BuildGauge()
                   .Name("lathe_jobs")
                   .Help("Jobs by project and status")
                   .Register(now);
  auto& blob_bytes = prometheus::BuildGauge()
                         .Name("lathe_blob_store_bytes")
                         .Help(
                             "Bytes of the blobs the records name (files, "
                             "adapters, checkpoints)")
                         .Register(now);
  auto stats = store_.ReadStats();
  if (stats.ok()) {
    for (const auto& [key, n] : stats->jobs) {
      std::string status = absl::AsciiStrToLower(
          v1::JobStatus_Name(key.second).substr(sizeof("JOB_STATUS_") - 1));
      jobs.Add({{"project", key.first}, {"status", status}})
          .Set(static_cast<double>(n));
    }
    blob_bytes.Add({}).Set(static_cast<double>(stats->blob_bytes));
  } else {
    spdlog::warn("/metrics: {}", stats.status().ToString());
  }

  auto& depth = prometheus::BuildGauge()
                    .Name("lathe_queue_depth")
                    .Help("Jobs waiting in the queue, by priority")
                    .Register(now);
  auto& oldest = prometheus::BuildGauge()
                     .Name("lathe_queue_oldest_wait_seconds")
                     .Help("How long the oldest queued job has waited")
                     .Register(now);
  auto input = store_.ReadSchedulerInput();
  if (input.ok()) {
    std::map<std::string, int> by_priority = {
        {"low", 0}, {"normal", 0}, {"high", 0}};
    int64_t first = 0;
    for (const auto& q : input->queued) {
      std::string p = q.priority == v1::JOB_PRIORITY_LOW    ? "low"
                      : q.priority == v1::JOB_PRIORITY_HIGH ? "high"
                                                            : "normal";
      ++by_priority[p];
      if (first == 0 || q.created_at < first) first = q.created_at;
    }
    for (const auto& [p, n] : by_priority) {
      depth.Add({{"priority", p}}).Set(n);
    }
    oldest.Add({}).Set(first == 0 ? 0.0
                                  : static_cast<double>(std::max<int64_t>(
                                        0, NowUnixSeconds() - first)));
  }

  auto& workers = prometheus::BuildGauge()
                      .Name("lathe_workers")
                      .Help("Connected workers, by state")
                      .Register(now);
  auto& memory = prometheus::BuildGauge()
                     .Name("lathe_worker_device_memory_bytes")
                     .Help("Each connected worker's device memory")
                     .Register(now);
  int idle = 0, busy = 0;
  for (const auto& w : coordinator_.Fleet()) {
    (w.idle ? idle : busy)++;
    for (size_t i = 0; i < w.devices.size(); ++i) {
      memory
          .Add({{"worker", w.worker_id},
                {"device", std::to_string(i)},
                {"kind", w.devices[i].kind}})
          .Set(static_cast<double>(w.devices[i].memory_bytes));
    }
  }
  workers.Add({{"state", "idle"}}).Set(idle);
  workers.Add({{"state", "busy"}}).Set(busy);

  auto& step = prometheus::BuildGauge()
                   .Name("lathe_job_step")
                   .Help("A running job's optimizer steps done")
                   .Register(now);
  auto& total = prometheus::BuildGauge()
                    .Name("lathe_job_total_steps")
                    .Help("A running job's optimizer steps in all")
                    .Register(now);
  auto& loss = prometheus::BuildGauge()
                   .Name("lathe_job_train_loss")
                   .Help("A running job's training loss at its newest step")
                   .Register(now);
  auto& accuracy =
      prometheus::BuildGauge()
          .Name("lathe_job_train_mean_token_accuracy")
          .Help("A running job's token accuracy at its newest step")
          .Register(now);
  auto& tps = prometheus::BuildGauge()
                  .Name("lathe_job_tokens_per_second")
                  .Help("A running job's training throughput")
                  .Register(now);
  auto running = store_.JobsInStatus(v1::JOB_STATUS_RUNNING);
  if (running.ok()) {
    for (const v1::Job& job : *running) {
      prometheus::Labels l = {{"job", job.id()}, {"project", job.project()}};
      step.Add(l).Set(static_cast<double>(job.progress().steps_done()));
      total.Add(l).Set(static_cast<double>(job.progress().steps_total()));
      auto m = store_.LatestMetrics(job.id());
      if (m.ok() && m->has_value()) {
        loss.Add(l).Set((*m)->train_loss());
        accuracy.Add(l).Set((*m)->train_mean_token_accuracy());
        tps.Add(l).Set((*m)->tokens_per_second());
      }
    }
  }

  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  std::vector<prometheus::MetricFamily> read = now.Collect();
  families.insert(families.end(), read.begin(), read.end());
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace lathe
