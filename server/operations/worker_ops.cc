#include "server/operations/worker_ops.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "common/echo.h"
#include "common/job_method.h"
#include "common/status_macros.h"
#include "server/request_limits.h"

namespace lathe {

absl::Status WorkerOps::CheckAttempt(const std::string& job_id,
                                     int32_t attempt) const {
  RETURN_IF_ERROR(CheckIdField("job_id", job_id));
  return deps_.coordinator->CheckCurrentAttempt(job_id, attempt);
}

std::string PeerHost(absl::string_view peer) {
  if (absl::ConsumePrefix(&peer, "ipv4:")) {
    return std::string(peer.substr(0, peer.rfind(':')));
  }
  if (absl::ConsumePrefix(&peer, "ipv6:")) {
    const std::string address =
        absl::StrReplaceAll(peer, {{"%5B", "["}, {"%5D", "]"}});
    const size_t end = address.rfind(']');
    if (!absl::StartsWith(address, "[") || end == std::string::npos) return "";
    return address.substr(0, end + 1);
  }
  if (absl::StartsWith(peer, "unix:")) return "127.0.0.1";
  return "";
}

absl::StatusOr<v1::WorkerDirective> WorkerOps::Report(
    const WorkerCaller&, const v1::WorkerReport& report,
    const std::string& peer_host) const {
  return deps_.coordinator->HandleReport(report, peer_host);
}

absl::StatusOr<std::vector<v1::WorkerDirective>> WorkerOps::ReportAll(
    const WorkerCaller&, const v1::WorkerReport& report,
    const std::string& peer_host) const {
  return deps_.coordinator->HandleReports(report, peer_host);
}

void WorkerOps::Disconnected(const WorkerCaller&,
                             const std::string& worker_id) const {
  deps_.coordinator->WorkerDisconnected(worker_id);
}

absl::StatusOr<std::string> WorkerOps::FetchFile(
    const WorkerCaller&, const v1::FetchFileRequest& r) const {
  RETURN_IF_ERROR(CheckAttempt(r.job_id(), r.attempt()));
  ASSIGN_OR_RETURN(v1::Job job, deps_.store->GetJob(r.job_id()));
  bool of_job = r.file_id() == job.training_file() ||
                r.file_id() == job.validation_file() ||
                r.file_id() == job.reports().general_file() ||
                r.file_id() == job.method().analyze().got_d().target_file();
  for (const auto& [field, mixture] : TrainingMixtures(job)) {
    for (const v1::MixtureSource& s : mixture->sources()) {
      of_job = of_job || r.file_id() == s.file_id() ||
               r.file_id() == s.validation_file_id();
    }
  }
  if (r.file_id().empty() || !of_job) {
    return absl::NotFoundError(absl::StrCat("file_id: ", Echo(r.file_id()),
                                            " is not a file of ", job.id()));
  }
  ASSIGN_OR_RETURN(v1::File file, deps_.store->GetFile(r.file_id()));
  return deps_.blobs->PathFor(file.sha256());
}

absl::StatusOr<std::string> WorkerOps::FetchCheckpointFile(
    const WorkerCaller&, const v1::FetchCheckpointFileRequest& r) const {
  RETURN_IF_ERROR(CheckAttempt(r.job_id(), r.attempt()));
  ASSIGN_OR_RETURN(auto all, deps_.store->ListCheckpoints(r.job_id()));
  for (const v1::Checkpoint& c : all) {
    if (c.step_number() != r.step()) continue;
    for (const v1::ResultFile& f : c.files()) {
      if (f.name() == r.name()) return deps_.blobs->PathFor(f.sha256());
    }
  }
  return absl::NotFoundError(absl::StrCat("no file ", Echo(r.name()),
                                          " in checkpoint ", r.step(), " of ",
                                          r.job_id()));
}

absl::StatusOr<std::string> WorkerOps::FetchModelFile(
    const WorkerCaller&, const v1::FetchModelFileRequest& r) const {
  RETURN_IF_ERROR(CheckAttempt(r.job_id(), r.attempt()));
  ASSIGN_OR_RETURN(v1::Job job, deps_.store->GetJob(r.job_id()));
  if (!r.input_model().empty()) {
    // A merge input: a result file of one of the job's input models.
    const auto& inputs = job.method().merge().inputs();
    if (std::find(inputs.begin(), inputs.end(), r.input_model()) == inputs.end()) {
      return absl::NotFoundError(absl::StrCat("input_model: ", Echo(r.input_model()),
                                              " is not an input of ", job.id()));
    }
    ASSIGN_OR_RETURN(v1::Model input, deps_.store->GetModel(r.input_model()));
    for (const v1::ModelFile& f : input.files()) {
      if (f.name() == r.name()) return deps_.blobs->PathFor(f.sha256());
    }
    return absl::NotFoundError(absl::StrCat("name: ", Echo(r.name()), " is not a file of model ",
                                            r.input_model()));
  }
  ASSIGN_OR_RETURN(v1::Model model, deps_.store->GetModel(job.model()));
  for (const v1::ModelFile& f : model.files()) {
    // Names come from the registration's directory listing, never from the
    // request, so nothing outside the model folder can be read.
    if (f.name() == r.name()) return model.path() + "/" + f.name();
  }
  return absl::NotFoundError(absl::StrCat(
      "name: ", Echo(r.name()), " is not a file of model ", job.model()));
}

std::unique_ptr<ResultUpload> WorkerOps::StartResultUpload(
    const WorkerCaller&) const {
  return std::make_unique<ResultUpload>(deps_);
}

}  // namespace lathe
