#include "server/operations/job_ops.h"

#include <map>
#include <optional>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "common/job_method.h"
#include "absl/synchronization/mutex.h"
#include "common/echo.h"
#include "common/ids.h"
#include "common/job_state.h"
#include "common/status_macros.h"
#include "server/job_request.h"
#include "server/request_limits.h"
#include "spdlog/spdlog.h"

namespace lathe {
namespace {

// Wakes NextJobEvents' thread when the feed says the job may have news.
class Waiter final : public EventFeed::Subscriber {
 public:
  void Wake() override {
    absl::MutexLock lock(&mu_);
    woken_ = true;
  }
  // True if woken before `deadline` (since the last call).
  bool WaitUntil(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithDeadline(absl::Condition(&woken_), deadline);
    return std::exchange(woken_, false);
  }

 private:
  absl::Mutex mu_;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

absl::StatusOr<v1::Job> JobOps::OwnedJob(const Caller& caller,
                                         const std::string& job_id) const {
  RETURN_IF_ERROR(CheckIdField("job_id", job_id));
  auto job = deps_.store->GetJob(job_id);
  if (!job.ok()) return NotFoundAs("job", job_id, job.status());
  RETURN_IF_ERROR(CheckOwner(caller, job->project(), "job", job_id));
  return job;
}

absl::StatusOr<v1::Job> JobOps::Presented(absl::StatusOr<v1::Job> job) const {
  if (job.ok()) RETURN_IF_ERROR(deps_.coordinator->FillQueuePosition(*job));
  return job;
}

absl::StatusOr<v1::Job> JobOps::CreateJob(const Caller& caller,
                                          const v1::CreateJobRequest& r) const {
  RETURN_IF_ERROR(CheckJobRequest(r));
  auto missing_model = [&] {
    return absl::NotFoundError(
        absl::StrCat("model: no model named \"", Echo(r.model()),
                     "\" (`lathe models list` shows them)"));
  };
  auto model = deps_.store->GetModel(r.model());
  if (!model.ok()) return missing_model();
  if (model->kind() != "base") {
    // Another project's fine-tuned model is as missing as one that never
    // existed.
    auto owner = deps_.store->GetJob(model->job_id());
    if (!owner.ok() || owner->project() != caller.project)
      return missing_model();
    return absl::InvalidArgumentError(absl::StrCat(
        "model: ", r.model(), " is a fine-tuned model; fine-tune its base, ",
        model->base_model()));
  }
  RETURN_IF_ERROR(CheckJobForModel(r, *model));
  // A mixture's files, each of the caller's project (another project's
  // file is as missing as one that never existed).
  auto own_file = [&](const std::string& field,
                      const std::string& id) -> absl::StatusOr<v1::File> {
    auto file = deps_.store->GetFile(id);
    if (!file.ok() || file->project() != caller.project) {
      return absl::NotFoundError(absl::StrCat(field, ": no such file ", Echo(id)));
    }
    return file;
  };
  if (MethodType(r.method()) == "merge") {
    // Each input: a fine-tuned model of this project (another project's is
    // as missing as one that never existed), made from the job's model.
    const auto& inputs = r.method().merge().inputs();
    bool any_lora = false;  // an input whose target_modules a LoRA result can take
    for (int i = 0; i < inputs.size(); ++i) {
      const std::string field = absl::StrCat("method.merge.inputs[", i, "]");
      auto input = deps_.store->GetModel(inputs[i]);
      std::optional<v1::Job> owner;
      if (input.ok() && input->kind() == "fine-tuned") {
        auto j = deps_.store->GetJob(input->job_id());
        if (j.ok() && j->project() == caller.project) owner = *std::move(j);
      }
      if (!owner.has_value()) {
        return absl::NotFoundError(absl::StrCat(
            field, ": no fine-tuned model ", Echo(inputs[i]),
            " in this project (`lathe models list` shows them)"));
      }
      if (input->base_model() != r.model()) {
        return absl::FailedPreconditionError(absl::StrCat(
            field, ": ", inputs[i], " is a fine-tune of ", input->base_model(),
            ", not of ", r.model(), "; a merge combines fine-tunes of one base"));
      }
      // What a merge reads (docs/merging.md): LoRA adapters and model
      // folders (full fine-tunes, S²FT's merged results, merges).
      if (owner->adapter() == v1::ADAPTER_TYPE_PROMPT_TUNING || owner->lora().use_dora()) {
        return absl::FailedPreconditionError(absl::StrCat(
            field, ": ", inputs[i], " is a ",
            owner->lora().use_dora() ? "DoRA" : "prompt-tuning",
            " adapter; a merge takes LoRA adapters and full model folders"));
      }
      any_lora = any_lora || owner->adapter() == v1::ADAPTER_TYPE_LORA;
    }
    const v1::MergeMethod& merge = r.method().merge();
    if (merge.has_lora_rank() && merge.lora_target_modules().empty() && !any_lora) {
      return absl::InvalidArgumentError(
          "method.merge.lora_target_modules: name the projections that get factors "
          "(e.g. q_proj,v_proj): no input is a LoRA adapter to take them from");
    }
    v1::File none;
    if (!r.validation_file().empty()) {
      ASSIGN_OR_RETURN(v1::File valid, own_file("validation_file", r.validation_file()));
      if (valid.format() == "preference") {
        return absl::InvalidArgumentError(absl::StrCat(
            "validation_file: ", valid.id(),
            " holds preference data; greedy_soup scores chat, prompt/completion or text data"));
      }
    }
    return Enqueue(caller, r, none, *model);
  }
  for (const auto& [mixture_field, mixture] : TrainingMixtures(r)) {
    const auto& sources = mixture->sources();
    for (int i = 0; i < sources.size(); ++i) {
      const std::string at = absl::StrCat(mixture_field, ".sources[", i, "].");
      // A mixture is supervised data: a preference file does not fit it.
      auto supervised = [&](const std::string& field,
                            const std::string& id) -> absl::Status {
        ASSIGN_OR_RETURN(v1::File file, own_file(field, id));
        if (file.format() == "preference") {
          return absl::InvalidArgumentError(absl::StrCat(
              field, ": ", id,
              " holds preference data; a mixture trains on chat, "
              "prompt/completion or text data"));
        }
        return absl::OkStatus();
      };
      RETURN_IF_ERROR(supervised(at + "file_id", sources[i].file_id()));
      if (!sources[i].validation_file_id().empty()) {
        RETURN_IF_ERROR(
            supervised(at + "validation_file_id", sources[i].validation_file_id()));
      }
    }
  }
  const auto mixtures = TrainingMixtures(r);
  auto training = mixtures.empty()
                      ? own_file("training_file", r.training_file())
                      : own_file(mixtures[0].first + ".sources[0].file_id",
                                 mixtures[0].second->sources(0).file_id());
  if (!training.ok()) return training.status();
  std::optional<v1::File> validation;
  if (!r.validation_file().empty()) {
    auto file = deps_.store->GetFile(r.validation_file());
    if (!file.ok() || file->project() != caller.project) {
      return absl::NotFoundError(absl::StrCat("validation_file: no such file ",
                                              Echo(r.validation_file())));
    }
    validation = *std::move(file);
  }
  RETURN_IF_ERROR(
      CheckJobFiles(r, *training, validation ? &*validation : nullptr));
  // A GOT-D analysis's target is supervised data of the project.
  if (const std::string& target = r.method().analyze().got_d().target_file();
      MethodType(r.method()) == "analyze" && !target.empty()) {
    ASSIGN_OR_RETURN(v1::File file, own_file("method.analyze.got_d.target_file", target));
    if (file.format() == "preference") {
      return absl::InvalidArgumentError(absl::StrCat(
          "method.analyze.got_d.target_file: ", file.id(),
          " holds preference data; GOT-D embeds chat, prompt/completion or text lines"));
    }
  }
  // The forgetting report's general file is supervised data of the project.
  if (!r.reports().general_file().empty()) {
    ASSIGN_OR_RETURN(v1::File general,
                     own_file("reports.general_file", r.reports().general_file()));
    if (general.format() == "preference") {
      return absl::InvalidArgumentError(absl::StrCat(
          "reports.general_file: ", general.id(),
          " holds preference data; the forgetting report measures a loss on chat, "
          "prompt/completion or text data"));
    }
  }
  return Enqueue(caller, r, *training, *model);
}

absl::StatusOr<v1::Job> JobOps::Enqueue(const Caller& caller,
                                        const v1::CreateJobRequest& r,
                                        const v1::File& training,
                                        const v1::Model& model) const {
  thread_local absl::BitGen gen;
  v1::Job job = ResolveJob(r, training, model, caller.project, NewId("ftjob"),
                           absl::Uniform<int64_t>(gen, 0, 1LL << 31),
                           deps_.options.job_defaults);
  // Files are validated line by line at upload; the store checks in the
  // insert's own transaction that they still exist, so the job is written
  // straight into the queue with both events: no crash can leave it in
  // validating_files, which nothing would advance.
  job.set_status(v1::JOB_STATUS_QUEUED);
  // Idempotency keys are per project: one project cannot probe another's.
  std::string key =
      r.idempotency_key().empty()
          ? ""
          : absl::StrCat(caller.project, "/", r.idempotency_key());
  ASSIGN_OR_RETURN(
      auto created,
      deps_.store->CreateJob(job, key, RequestFingerprint(r),
                             deps_.options.max_jobs_in_flight_per_project));
  if (created.created) {
    spdlog::info("created {} on {} ({})", job.id(), job.model(),
                 job.method().type() == "merge"
                     ? absl::StrCat("a merge of ", job.method().merge().inputs_size(), " models")
                     : absl::StrCat(training.line_count(), " examples"));
  }
  return Presented(std::move(created.job));
}

absl::StatusOr<v1::Job> JobOps::GetJob(const Caller& caller,
                                       const v1::GetJobRequest& r) const {
  return Presented(OwnedJob(caller, r.job_id()));
}

absl::StatusOr<v1::ListJobsResponse> JobOps::ListJobs(
    const Caller& caller, const v1::ListJobsRequest& r) const {
  if (r.limit() < 0 || r.limit() > 100) {
    return absl::InvalidArgumentError("limit: must be 1..100");
  }
  if (!v1::JobStatus_IsValid(r.status())) {
    return absl::InvalidArgumentError("status: unknown value");
  }
  std::map<std::string, std::string> metadata(r.metadata().begin(),
                                              r.metadata().end());
  RETURN_IF_ERROR(CheckMetadata(metadata));
  RETURN_IF_ERROR(CheckIdField("after", r.after(), /*required=*/false));
  ASSIGN_OR_RETURN(auto page,
                   deps_.store->ListJobs(caller.project, r.limit(), r.after(),
                                         r.status(), metadata));
  ASSIGN_OR_RETURN(auto positions,
                   deps_.coordinator->QueuePositions(caller.project));
  v1::ListJobsResponse out;
  for (auto& j : page.data) {
    if (auto it = positions.find(j.id()); it != positions.end()) {
      j.set_queue_position(it->second);
    }
    *out.add_data() = std::move(j);
  }
  out.set_has_more(page.has_more);
  return out;
}

absl::StatusOr<v1::Job> JobOps::CancelJob(const Caller& caller,
                                          const v1::CancelJobRequest& r) const {
  RETURN_IF_ERROR(OwnedJob(caller, r.job_id()).status());
  return Presented(deps_.coordinator->CancelJob(r.job_id()));
}

absl::StatusOr<v1::Job> JobOps::PauseJob(const Caller& caller,
                                         const v1::PauseJobRequest& r) const {
  RETURN_IF_ERROR(OwnedJob(caller, r.job_id()).status());
  return Presented(deps_.coordinator->PauseJob(r.job_id()));
}

absl::StatusOr<v1::Job> JobOps::ResumeJob(const Caller& caller,
                                          const v1::ResumeJobRequest& r) const {
  RETURN_IF_ERROR(OwnedJob(caller, r.job_id()).status());
  return Presented(deps_.coordinator->ResumeJob(r.job_id()));
}

absl::StatusOr<v1::ListJobEventsResponse> JobOps::ListJobEvents(
    const Caller& caller, const v1::ListJobEventsRequest& r) const {
  RETURN_IF_ERROR(OwnedJob(caller, r.job_id()).status());
  if (r.limit() < 0 || r.limit() > 1000) {
    return absl::InvalidArgumentError("limit: must be 1..1000");
  }
  ASSIGN_OR_RETURN(auto page,
                   deps_.store->ListEvents(r.job_id(), r.after(), r.limit()));
  v1::ListJobEventsResponse out;
  for (auto& e : page.data) *out.add_data() = std::move(e);
  out.set_has_more(page.has_more);
  return out;
}

absl::StatusOr<v1::ListJobCheckpointsResponse> JobOps::ListJobCheckpoints(
    const Caller& caller, const v1::ListJobCheckpointsRequest& r) const {
  RETURN_IF_ERROR(OwnedJob(caller, r.job_id()).status());
  ASSIGN_OR_RETURN(auto all, deps_.store->ListCheckpoints(r.job_id()));
  v1::ListJobCheckpointsResponse out;
  for (auto& c : all) *out.add_data() = std::move(c);
  return out;
}

absl::StatusOr<std::unique_ptr<EventFeed::Follow>> JobOps::WatchJob(
    const Caller& caller, const v1::WatchJobRequest& r,
    std::weak_ptr<EventFeed::Subscriber> subscriber) const {
  return deps_.feed->Open(caller, r.job_id(), r.after(), std::move(subscriber));
}

absl::StatusOr<EventFeed::Follow::Batch> JobOps::NextJobEvents(
    const Caller& caller, const v1::WatchJobRequest& r,
    absl::Time deadline) const {
  auto waiter = std::make_shared<Waiter>();
  ASSIGN_OR_RETURN(auto follow, WatchJob(caller, r, waiter));
  while (true) {
    // Next() also re-checks the key and the follow's age on each wake-up
    // (the feed wakes every follow once per check interval).
    ASSIGN_OR_RETURN(EventFeed::Follow::Batch batch, follow->Next());
    if (!batch.updates.empty() || batch.finished) return batch;
    if (!waiter->WaitUntil(deadline)) return batch;
  }
}

std::vector<Download> JobOps::DownloadsOf(
    const google::protobuf::RepeatedPtrField<v1::ResultFile>& files) const {
  std::vector<Download> out;
  out.reserve(files.size());
  for (const v1::ResultFile& f : files) {
    out.push_back({f, deps_.blobs->PathFor(f.sha256())});
  }
  return out;
}

absl::StatusOr<std::vector<Download>> JobOps::DownloadAdapter(
    const Caller& caller, const v1::DownloadAdapterRequest& r) const {
  ASSIGN_OR_RETURN(v1::Job job, OwnedJob(caller, r.job_id()));
  if (job.result_files().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job.id(), " has no adapter yet (status ",
                     StatusName(job.status()), ")"));
  }
  return DownloadsOf(job.result_files());
}

absl::StatusOr<std::vector<Download>> JobOps::DownloadCheckpoint(
    const Caller& caller, const v1::DownloadCheckpointRequest& r) const {
  RETURN_IF_ERROR(OwnedJob(caller, r.job_id()).status());
  ASSIGN_OR_RETURN(auto all, deps_.store->ListCheckpoints(r.job_id()));
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (r.step_number() == 0 || it->step_number() == r.step_number()) {
      return DownloadsOf(it->files());
    }
  }
  return absl::NotFoundError(
      r.step_number() == 0
          ? absl::StrCat("job ", r.job_id(), " has no checkpoint yet")
          : absl::StrCat("step_number: job ", r.job_id(),
                         " has no checkpoint at step ", r.step_number()));
}

}  // namespace lathe
