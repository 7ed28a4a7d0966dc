#include "worker/agent/agent.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/grpc_status.h"
#include "common/ids.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/agent/attempt_setup.h"
#include "worker/agent/job_options.h"
#include "worker/engine/inference/analyze.h"
#include "worker/engine/merge/merge.h"
#include "worker/agent/device_report.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/device/placement.h"
#include "worker/engine/distributed/data_parallel.h"

namespace lathe::worker {

namespace fs = std::filesystem;

struct Agent::Attempt {
  v1::Assignment assignment;
  std::thread thread;
  std::atomic<bool> stop{false};
  std::atomic<bool> checkpoint_before_stop{false};
  std::atomic<bool> superseded{false};            // the server dropped it
  std::vector<v1::CheckpointReport> checkpoints;  // not yet acknowledged
  // Guarded by Agent::mu_.
  int64_t next_seq = 1;
  std::vector<v1::AttemptEvent> pending;  // not yet acknowledged
  int64_t step = 0;
  int64_t total_steps = 0;
  int64_t trained_tokens = 0;
  std::optional<v1::AttemptOutcome> outcome;
  std::string rendezvous;  // rank 0 of a gang: where its store listens
};

namespace {

std::string DefaultWorkerId() {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return absl::StrCat(host, "-", getpid());
}

// Marks `outcome` failed with the job error `code`, `message`.
void SetFailed(v1::AttemptOutcome& outcome, const std::string& code, const std::string& message,
               bool user_fault) {
  outcome.set_result(v1::AttemptOutcome::RESULT_FAILED);
  outcome.mutable_error()->set_code(code);
  outcome.mutable_error()->set_message(message);
  outcome.mutable_error()->set_user_fault(user_fault);
}

v1::JobEvent Message(const std::string& text,
                     const std::string& level = "info") {
  v1::JobEvent e;
  e.set_type("message");
  e.set_level(level);
  e.set_message(text);
  return e;
}

// Whether a transfer that failed with `code` may work if tried again: lathed
// was restarting, unreachable or shutting down, or could not store the
// bytes for now (disk full, file size limit, a failed write or fsync).
// Refusals (the attempt superseded, a bad request) and corrupt data are final.
bool Passing(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
      return true;
    default:
      return false;
  }
}

// Writes a stream of FileChunk to `path`; returns the content's SHA-256, or
// the stream's or the write's error.
absl::StatusOr<std::string> ReceiveToFile(
    grpc::ClientReader<v1::FileChunk>* reader, const fs::path& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  Sha256 hash;
  v1::FileChunk chunk;
  while (reader->Read(&chunk)) {
    out.write(chunk.data().data(),
              static_cast<std::streamsize>(chunk.data().size()));
    hash.Update(chunk.data());
  }
  grpc::Status st = reader->Finish();
  out.close();
  if (!st.ok()) return FromGrpcStatus(st);
  if (!out)
    return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return hash.HexDigest();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Agent>> Agent::Create(AgentOptions options) {
  if (options.worker_id.empty()) options.worker_id = DefaultWorkerId();
  grpc::ChannelArguments args;
  // Notice a hung connection (peer frozen, network cut) within seconds.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Back within seconds of a lathed restart, not gRPC's default 2 minutes.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 5000);
  args.SetMaxReceiveMessageSize(16 << 20);
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                   MakeChannel(options.server, options.tls, args));
  ASSIGN_OR_RETURN(std::vector<v1::Device> devices,
                   ReportedDevices(options.device));
  return std::unique_ptr<Agent>(
      new Agent(std::move(options), std::move(channel), std::move(devices)));
}

Agent::Agent(AgentOptions options, std::shared_ptr<grpc::Channel> channel,
             std::vector<v1::Device> devices)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      devices_(std::move(devices)) {
  stub_ = v1::Worker::NewStub(channel_);
}

Agent::~Agent() {
  Stop();
  std::vector<std::unique_ptr<Attempt>> attempts;
  {
    absl::MutexLock lock(&mu_);
    attempts = std::move(attempts_);
  }
  for (auto& a : attempts) {
    if (a->thread.joinable()) a->thread.join();
  }
}

std::unique_ptr<grpc::ClientContext> Agent::NewContext() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->AddMetadata("authorization", "Bearer " + options_.token);
  return ctx;
}

void Agent::Stop() {
  if (stopping_.exchange(true)) abort_.store(true);
  absl::MutexLock lock(&mu_);
  for (auto& a : attempts_) {
    a->checkpoint_before_stop.store(true);
    a->stop.store(true);
  }
  drain_deadline_ = absl::Now() + options_.drain_timeout;
  wake_ = true;
}

v1::WorkerReport Agent::BuildReport() {
  v1::WorkerReport r;
  r.set_worker_id(options_.worker_id);
  // Free memory changes: read again for every report.
  if (auto devices = ReportedDevices(options_.device); devices.ok()) {
    devices_ = *std::move(devices);
  } else {
    spdlog::warn("reporting the devices read before: {}",
                 devices.status().ToString());
  }
  for (const v1::Device& d : devices_) *r.add_devices() = d;
  if (options_.max_attempts > 1) r.set_max_attempts(options_.max_attempts);
  absl::MutexLock lock(&mu_);
  wake_ = false;
  for (size_t i = 0; i < attempts_.size(); ++i) {
    const Attempt& attempt = *attempts_[i];
    v1::RunningAttempt* a = i == 0 ? r.mutable_attempt() : r.add_more_attempts();
    a->set_job_id(attempt.assignment.job_id());
    a->set_attempt(attempt.assignment.attempt());
    a->set_step(attempt.step);
    a->set_total_steps(attempt.total_steps);
    a->set_trained_tokens(attempt.trained_tokens);
    a->set_rank(attempt.assignment.rank());
    a->set_rendezvous(attempt.rendezvous);
    for (const auto& e : attempt.pending) *a->add_events() = e;
    for (const auto& c : attempt.checkpoints) *a->add_checkpoints() = c;
    if (attempt.outcome) *a->mutable_outcome() = *attempt.outcome;
  }
  return r;
}

void Agent::Apply(const v1::WorkerDirective& d) {
  std::unique_ptr<Attempt> finished;
  {
    absl::MutexLock lock(&mu_);
    // The attempt it answers: the one it names, else (a server answering
    // one attempt) the first.
    auto target = attempts_.end();
    if (!d.for_job_id().empty()) {
      target = std::find_if(attempts_.begin(), attempts_.end(), [&](const auto& a) {
        return a->assignment.job_id() == d.for_job_id();
      });
    } else if (!attempts_.empty()) {
      target = attempts_.begin();
    }
    if (target != attempts_.end()) {
      Attempt* attempt = target->get();
      auto& p = attempt->pending;
      p.erase(std::remove_if(p.begin(), p.end(),
                             [&](const v1::AttemptEvent& e) {
                               return e.seq() <= d.acked_event_seq();
                             }),
              p.end());
      auto& cps = attempt->checkpoints;
      for (int64_t step : d.acked_checkpoints()) {
        cps.erase(std::remove_if(cps.begin(), cps.end(),
                                 [&](const v1::CheckpointReport& c) {
                                   return c.step() == step;
                                 }),
                  cps.end());
      }
      if (d.stop() && d.checkpoint_before_stop()) {
        attempt->checkpoint_before_stop.store(true);
      }
      if (d.stop() && !attempt->stop.exchange(true)) {
        spdlog::info("server asks to stop {}: {}",
                     attempt->assignment.job_id(), d.stop_reason());
      }
      if (d.superseded()) attempt->superseded.store(true);
      if (d.outcome_recorded() || d.superseded()) {
        finished = std::move(*target);
        attempts_.erase(target);
        wake_ = true;  // say "idle" now, not a heartbeat later
      }
    }
    const bool running = std::any_of(attempts_.begin(), attempts_.end(), [&](const auto& a) {
      return a->assignment.job_id() == d.assignment().job_id();
    });
    if (d.has_assignment() && !running && !stopping_.load() &&
        static_cast<int>(attempts_.size()) < std::max(options_.max_attempts, 1)) {
      StartAttempt(d.assignment());
    }
  }
  if (finished && finished->thread.joinable()) finished->thread.join();
}

void Agent::StartAttempt(const v1::Assignment& a) {
  spdlog::info("assigned {} (attempt {})", a.job_id(), a.attempt());
  attempts_.push_back(std::make_unique<Attempt>());
  Attempt* raw = attempts_.back().get();
  raw->assignment = a;
  raw->thread = std::thread([this, raw] { RunAttempt(raw); });
}

void Agent::Emit(Attempt* attempt, v1::JobEvent event) {
  // A gang's events are rank 0's: the others' steps are the same steps.
  if (attempt->assignment.rank() > 0) return;
  absl::MutexLock lock(&mu_);
  v1::AttemptEvent e;
  e.set_seq(attempt->next_seq++);
  *e.mutable_event() = std::move(event);
  attempt->pending.push_back(std::move(e));
  wake_ = true;
}

absl::Status Agent::Retry(Attempt* attempt, const std::string& what,
                          absl::Duration patience,
                          const std::function<absl::Status()>& transfer) {
  absl::Time deadline = absl::Now() + patience;
  absl::Duration backoff = absl::Milliseconds(200);
  bool warned = false;
  while (true) {
    absl::Status st = transfer();
    if (st.ok() || !Passing(st.code()) || GivingUp(attempt) ||
        absl::Now() + backoff > deadline) {
      return st;
    }
    if (!warned) {
      Emit(attempt, Message(absl::StrCat(what, " failed (", st.ToString(),
                                         "); retrying for up to ",
                                         absl::FormatDuration(patience)),
                            "warn"));
      warned = true;
    }
    AwaitLathed(absl::Now() + backoff, [&] { return GivingUp(attempt); });
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
}

bool Agent::GivingUp(Attempt* attempt) {
  if (attempt->superseded.load() || abort_.load()) return true;
  absl::MutexLock lock(&mu_);
  return stopping_.load() && absl::Now() > drain_deadline_;
}

bool Agent::FetchFile(Attempt* attempt, const std::string& file_id,
                      const std::string& path, std::string* error) {
  v1::FetchFileRequest r;
  r.set_job_id(attempt->assignment.job_id());
  r.set_attempt(attempt->assignment.attempt());
  r.set_file_id(file_id);
  absl::Status st =
      Retry(attempt, absl::StrCat("Fetching ", file_id),
            options_.transfer_patience, [&] {
              auto ctx = NewContext();
              return ReceiveToFile(stub_->FetchFile(ctx.get(), r).get(), path)
                  .status();
            });
  if (!st.ok()) {
    *error = absl::StrCat("fetching ", file_id, ": ", st.message());
    return false;
  }
  return true;
}

bool Agent::UploadCheckpoint(Attempt* attempt, int64_t step,
                             const std::string& dir,
                             const std::vector<std::string>& files,
                             const v1::CheckpointMetrics& metrics,
                             std::string* error) {
  for (const std::string& name : files) {
    if (!UploadResult(attempt, (fs::path(dir) / name).string(), name, step,
                      options_.checkpoint_patience, error)) {
      return false;
    }
  }
  v1::CheckpointReport report;
  report.set_step(step);
  for (const std::string& name : files) report.add_files(name);
  *report.mutable_metrics() = metrics;
  absl::MutexLock lock(&mu_);
  attempt->checkpoints.push_back(std::move(report));
  wake_ = true;
  return true;
}

bool Agent::FetchCheckpoint(Attempt* attempt, const v1::Checkpoint& checkpoint,
                            const std::string& dir, std::string* error) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  for (const v1::ResultFile& f : checkpoint.files()) {
    v1::FetchCheckpointFileRequest r;
    r.set_job_id(attempt->assignment.job_id());
    r.set_attempt(attempt->assignment.attempt());
    r.set_step(checkpoint.step_number());
    r.set_name(f.name());
    std::string what = absl::StrCat(
        "Fetching checkpoint ", checkpoint.step_number(), " file ", f.name());
    absl::Status st = Retry(attempt, what, options_.transfer_patience, [&] {
      auto ctx = NewContext();
      auto sha = ReceiveToFile(stub_->FetchCheckpointFile(ctx.get(), r).get(),
                               fs::path(dir) / f.name());
      if (!sha.ok()) return sha.status();
      if (*sha != f.sha256()) return absl::DataLossError("SHA-256 mismatch");
      return absl::OkStatus();
    });
    if (!st.ok()) {
      *error = absl::StrCat("fetching checkpoint ", checkpoint.step_number(),
                            " file ", f.name(), ": ", st.message());
      return false;
    }
  }
  return true;
}

bool Agent::ResolveModel(Attempt* attempt, std::string* dir,
                         std::string* error) {
  const v1::Assignment& as = attempt->assignment;
  std::error_code ec;
  if (options_.use_local_models &&
      fs::exists(fs::path(as.model_path()) / "config.json", ec)) {
    *dir = as.model_path();
    return true;
  }
  const v1::Model& model = as.model();
  if (model.content_sha256().size() != 64) {
    *error =
        absl::StrCat("base model ", as.job().model(), " is not readable at ",
                     as.model_path(), " and the server sent no file list");
    return false;
  }
  fs::path cache =
      fs::path(options_.work_dir) / "models" / model.content_sha256();
  *dir = cache.string();
  if (fs::exists(cache / ".complete", ec)) return true;
  Emit(attempt,
       Message(absl::StrCat("Fetching base model ", as.job().model(), " (",
                            model.bytes() >> 20, " MiB) from lathed")));
  fs::path tmp = cache.string() + ".part";
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (!FetchModelFiles(attempt, model, "", tmp, error)) {
    fs::remove_all(tmp, ec);
    return false;
  }
  std::ofstream(tmp / ".complete") << model.content_sha256() << "\n";
  fs::remove_all(cache, ec);
  fs::rename(tmp, cache, ec);
  if (ec) {
    *error = absl::StrCat("caching the model in ", cache.string(), ": ",
                          ec.message());
    return false;
  }
  return true;
}

bool Agent::FetchModelFiles(Attempt* attempt, const v1::Model& model,
                            const std::string& input_model, const fs::path& dir,
                            std::string* error) {
  const v1::Assignment& as = attempt->assignment;
  const std::string& name = input_model.empty() ? as.job().model() : input_model;
  for (const v1::ModelFile& f : model.files()) {
    v1::FetchModelFileRequest r;
    r.set_job_id(as.job_id());
    r.set_attempt(as.attempt());
    r.set_name(f.name());
    r.set_input_model(input_model);
    std::string what = absl::StrCat("Fetching ", f.name(), " of ", name);
    absl::Status st = Retry(attempt, what, options_.transfer_patience, [&] {
      auto ctx = NewContext();
      auto sha = ReceiveToFile(stub_->FetchModelFile(ctx.get(), r).get(),
                               dir / f.name());
      if (!sha.ok()) return sha.status();
      if (*sha != f.sha256()) {
        return absl::DataLossError(
            absl::StrCat("SHA-256 ", *sha, " != ", f.sha256()));
      }
      return absl::OkStatus();
    });
    if (!st.ok()) {
      *error = absl::StrCat("fetching ", f.name(), " of ", name, ": ", st.message());
      return false;
    }
  }
  return true;
}

bool Agent::UploadResultFolder(Attempt* attempt, const fs::path& dir,
                               v1::AttemptOutcome& outcome, std::string* error) {
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_regular_file()) names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  if (names.empty()) {
    *error = absl::StrCat("the engine wrote no result files in ", dir.string());
    return false;
  }
  for (const std::string& name : names) {
    if (!UploadResult(attempt, (dir / name).string(), name, 0, options_.transfer_patience,
                      error)) {
      return false;
    }
    outcome.add_result_files(name);
  }
  return true;
}

void Agent::RunAnalyzeAttempt(Attempt* attempt, const fs::path& dir,
                              v1::AttemptOutcome& outcome) {
  const v1::Assignment& as = attempt->assignment;
  const v1::Job& job = as.job();
  const v1::AnalyzeMethod& a = job.method().analyze();
  const v1::GotDSelection& g = a.got_d();
  const v1::ClearSelection& c = a.clear();
  engine::AnalyzeSpec spec{
      .data_file = (dir / "data.jsonl").string(),
      .data_file_name = absl::StrCat("training_file ", job.training_file()),
      .max_seq_len = a.max_seq_len(),
      .batch_size = a.batch_size(),
      .select = a.selection() == v1::ANALYZE_SELECTION_GOT_D ? engine::AnalyzeSelection::kGotD
                : a.selection() == v1::ANALYZE_SELECTION_CLEAR
                    ? engine::AnalyzeSelection::kClear
                    : engine::AnalyzeSelection::kLossQuantile,
      .loss_quantile_low = a.loss_quantile_low(),
      .loss_quantile_high = a.loss_quantile_high(),
      .got_d = {.target_file_name = absl::StrCat("method.analyze.got_d.target_file ",
                                                 g.target_file()),
                .budget = g.budget(),
                .epsilon_fraction = g.epsilon_fraction(),
                .seed = static_cast<uint64_t>(job.seed())},
      .clear = {.filter = {.score = c.score() == v1::CLEAR_SCORE_LOG_LIKELIHOOD
                                        ? engine::ClearScore::kLogLikelihood
                                        : engine::ClearScore::kConfidence,
                           .alpha = c.alpha(),
                           .threshold = c.has_threshold()
                                            ? std::optional<double>(c.threshold())
                                            : std::nullopt,
                           .drop_fraction = c.drop_fraction()},
                .consistency = {.samples = c.samples(),
                                .temperature = c.temperature(),
                                .max_new_tokens = c.max_new_tokens(),
                                .seed = static_cast<uint64_t>(job.seed())},
                .answer_extractor = {.kind = c.answer_extractor(),
                                     .pattern = c.answer_pattern()}},
      .keep_duplicates = a.keep_duplicates(),
      .out_dir = (dir / "analysis").string(),
      .device = {.device = options_.device, .dtype = "float32"}};
  std::string error;
  bool fetched = ResolveModel(attempt, &spec.model_dir, &error) &&
                 FetchFile(attempt, job.training_file(), spec.data_file, &error);
  if (fetched && !job.validation_file().empty()) {
    spec.validation_file = (dir / "valid.jsonl").string();
    spec.validation_file_name = absl::StrCat("validation_file ", job.validation_file());
    fetched = FetchFile(attempt, job.validation_file(), spec.validation_file, &error);
  }
  if (fetched && spec.select == engine::AnalyzeSelection::kGotD) {
    spec.got_d.target_file = (dir / "target.jsonl").string();
    fetched = FetchFile(attempt, g.target_file(), spec.got_d.target_file, &error);
  }
  auto fail = [&](const std::string& code, const std::string& message, bool user_fault) {
    SetFailed(outcome, code, message, user_fault);
  };
  if (!fetched) return fail("fetch_failed", error, false);
  Emit(attempt, Message(absl::StrCat("Analysis started on ", options_.worker_id, ": ",
                                     job.training_file(), " with ", job.model())));
  absl::StatusOr<engine::AnalyzeSummary> summary =
      engine::AnalyzeData(spec, [&](int64_t done, int64_t total) {
        absl::MutexLock lock(&mu_);
        attempt->step = done;
        attempt->total_steps = total;
      });
  if (!summary.ok()) {
    spdlog::error("{} attempt {} failed: {}", as.job_id(), as.attempt(),
                  summary.status().ToString());
    // A line that does not tokenize is the user's data.
    if (absl::IsInvalidArgument(summary.status())) {
      return fail("invalid_training_file", std::string(summary.status().message()), true);
    }
    return fail("platform_error", std::string(summary.status().message()), false);
  }
  if (!UploadResultFolder(attempt, spec.out_dir, outcome, &error)) {
    return fail("upload_failed", error, false);
  }
  Emit(attempt, Message(absl::StrCat(
                    "Analysis of ", summary->examples, " lines: ", summary->kept, " kept, ",
                    summary->exact_duplicates, " exact and ", summary->near_duplicates,
                    " near duplicates, ", summary->validation_overlaps,
                    " overlapping validation_file, ", summary->truncated, " longer than ",
                    spec.max_seq_len, " tokens; ",
                    spec.select == engine::AnalyzeSelection::kGotD
                        ? absl::StrCat("GOT-D kept ", g.budget(), " at most (epsilon ",
                                       summary->got_d_epsilon, ", ",
                                       summary->got_d_iterations, " Sinkhorn iterations)")
                    : spec.select == engine::AnalyzeSelection::kClear
                        ? absl::StrCat("CLEAR filter by ",
                                       engine::ClearScoreName(spec.clear.filter.score))
                        : absl::StrCat("loss quantiles ", summary->loss_low, " .. ",
                                       summary->loss_high),
                    " (report.jsonl, selected.jsonl)")));
  outcome.set_result(v1::AttemptOutcome::RESULT_SUCCEEDED);
}

void Agent::RunMergeAttempt(Attempt* attempt, const fs::path& dir,
                            v1::AttemptOutcome& outcome) {
  const v1::Assignment& as = attempt->assignment;
  const v1::Job& job = as.job();
  auto fail = [&](const std::string& code, const std::string& message, bool user_fault) {
    SetFailed(outcome, code, message, user_fault);
  };
  absl::StatusOr<engine::MergeSpec> translated = MergeSpecForJob(job);
  if (!translated.ok()) {
    // lathed resolves every setting: one left unresolved is the platform's.
    return fail("platform_error", std::string(translated.status().message()), false);
  }
  engine::MergeSpec spec = *std::move(translated);
  std::string error;
  std::error_code ec;
  bool fetched = ResolveModel(attempt, &spec.base_dir, &error);
  spec.base_model_name = job.model();
  for (int i = 0; fetched && i < as.merge_inputs_size(); ++i) {
    const fs::path input = dir / absl::StrCat("input-", i);
    fs::create_directories(input, ec);
    Emit(attempt, Message(absl::StrCat("Fetching input ", as.merge_inputs(i).id(), " (",
                                       as.merge_inputs(i).bytes() >> 20, " MiB)")));
    fetched = FetchModelFiles(attempt, as.merge_inputs(i), as.merge_inputs(i).id(), input, &error);
    if (i < static_cast<int>(spec.inputs.size())) spec.inputs[i].dir = input.string();
  }
  if (fetched && as.merge_inputs_size() != static_cast<int>(spec.inputs.size())) {
    return fail("platform_error", "the assignment's merge inputs do not match the job's", false);
  }
  if (fetched && !job.validation_file().empty()) {
    spec.soup.validation_file = (dir / "valid.jsonl").string();
    spec.soup.validation_file_name = absl::StrCat("validation_file ", job.validation_file());
    fetched = FetchFile(attempt, job.validation_file(), spec.soup.validation_file, &error);
  }
  if (!fetched) return fail("fetch_failed", error, false);
  spec.output_dir = (dir / "merged").string();
  // A LoRA result (method.merge.lora_rank): the adapter re-factorised from
  // the merged delta is what the job uploads.
  const bool lora_result = job.method().merge().has_lora_rank();
  if (lora_result) spec.lora.dir = (dir / "merged-lora").string();
  const std::string method(engine::MergeMethodName(spec.params.method));
  Emit(attempt, Message(absl::StrCat("Merge started on ", options_.worker_id, ": ", method, " of ",
                                     spec.inputs.size(), " fine-tunes of ", job.model())));
  engine::MergeHooks hooks;
  int64_t reported = -1;
  hooks.on_tensor = [&](int64_t done, int64_t total, const std::string&) {
    {
      absl::MutexLock lock(&mu_);
      attempt->step = done;
      attempt->total_steps = total;
    }
    // A progress line at every tenth, not per tensor.
    const int64_t tenth = total > 0 ? done * 10 / total : 10;
    if (tenth != reported) {
      reported = tenth;
      Emit(attempt, Message(absl::StrCat("Merged ", done, "/", total, " tensors")));
    }
  };
  hooks.on_soup_step = [&](const engine::SoupStep& step) {
    const std::string& input = spec.inputs[step.input].name;
    Emit(attempt,
         Message(step.phase == engine::SoupStep::Phase::kScored
                     ? absl::StrCat("Greedy soup: ", input, " alone has validation loss ",
                                    step.input_loss)
                     : absl::StrCat("Greedy soup: with ", input, " the loss is ", step.soup_loss,
                                    step.kept ? ": kept" : ": left out", " (soup of ",
                                    step.soup_size, ", loss ", step.best_loss, ")")));
  };
  absl::StatusOr<engine::MergeResult> result = engine::RunMerge(spec, hooks);
  if (!result.ok()) {
    spdlog::error("{} attempt {} failed: {}", as.job_id(), as.attempt(),
                  result.status().ToString());
    outcome.set_result(v1::AttemptOutcome::RESULT_FAILED);
    *outcome.mutable_error() = JobErrorFor(result.status());
    return;
  }
  if (!UploadResultFolder(attempt, lora_result ? spec.lora.dir : spec.output_dir, outcome,
                          &error)) {
    return fail("upload_failed", error, false);
  }
  std::vector<std::string> merged;
  for (int i : result->merged_inputs) merged.push_back(spec.inputs[i].name);
  Emit(attempt, Message(absl::StrCat(
                    lora_result ? absl::StrCat("LoRA adapter (rank ", spec.lora.rank, ") uploaded (")
                                : std::string("Model uploaded ("),
                    method, " of ", absl::StrJoin(merged, ", "), ", ",
                    result->tensors, " tensors",
                    result->validation_loss.has_value()
                        ? absl::StrCat(", validation loss ", *result->validation_loss)
                        : "",
                    ")")));
  outcome.set_result(v1::AttemptOutcome::RESULT_SUCCEEDED);
}

bool Agent::UploadResult(Attempt* attempt, const std::string& path,
                         const std::string& name, int64_t checkpoint_step,
                         absl::Duration patience, std::string* error) {
  auto sha = Sha256File(path);
  std::error_code ec;
  int64_t size = static_cast<int64_t>(fs::file_size(path, ec));
  if (!sha.ok() || ec) {
    *error = absl::StrCat("reading ", path, " failed");
    return false;
  }
  std::string what = checkpoint_step > 0
                         ? absl::StrCat("Uploading checkpoint ",
                                        checkpoint_step, " file ", name)
                         : absl::StrCat("Uploading ", name);
  absl::Status st = Retry(attempt, what, patience, [&] {
    return UploadOnce(attempt, path, name, size, *sha, checkpoint_step);
  });
  if (!st.ok()) {
    *error = absl::StrCat("uploading ", name, ": ", st.message());
    return false;
  }
  return true;
}

absl::Status Agent::UploadOnce(Attempt* attempt, const std::string& path,
                               const std::string& name, int64_t bytes,
                               const std::string& sha256,
                               int64_t checkpoint_step) {
  auto ctx = NewContext();
  v1::ResultFile stored;
  auto writer = stub_->UploadResult(ctx.get(), &stored);
  v1::UploadResultRequest head;
  auto* h = head.mutable_header();
  h->set_job_id(attempt->assignment.job_id());
  h->set_attempt(attempt->assignment.attempt());
  h->set_name(name);
  h->set_bytes(bytes);
  h->set_sha256(sha256);
  h->set_checkpoint_step(checkpoint_step);
  bool open = writer->Write(head);
  std::ifstream in(path, std::ios::binary);
  std::string buf(1 << 20, '\0');
  while (open && in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() <= 0) break;
    v1::UploadResultRequest c;
    c.set_chunk(buf.data(), static_cast<size_t>(in.gcount()));
    open = writer->Write(c);
  }
  writer->WritesDone();
  return FromGrpcStatus(writer->Finish());
}

void Agent::RunAttempt(Attempt* attempt) {
  // Attempts at once split the CPU's threads (a GPU run's CPU work too).
  engine::ShareCpuThreads(options_.max_attempts);
  const v1::Assignment& as = attempt->assignment;
  const v1::Job& job = as.job();
  fs::path dir = fs::path(options_.work_dir) / as.job_id() /
                 absl::StrCat("attempt-", as.attempt());
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir, ec);

  v1::AttemptOutcome outcome;
  auto fail = [&](const std::string& code, const std::string& message,
                  bool user_fault) {
    SetFailed(outcome, code, message, user_fault);
  };

  // The attempt's end, whatever it ran: its folder removed, its outcome
  // handed to Run().
  auto finish = [&] {
    fs::remove_all(dir, ec);
    spdlog::info("{} attempt {} ended: {}", as.job_id(), as.attempt(),
                 v1::AttemptOutcome::Result_Name(outcome.result()));
    absl::MutexLock lock(&mu_);
    attempt->outcome = outcome;
    wake_ = true;
  };
  if (job.method().type() == "merge" || job.method().type() == "analyze") {
    if (job.method().type() == "merge") {
      RunMergeAttempt(attempt, dir, outcome);
    } else {
      RunAnalyzeAttempt(attempt, dir, outcome);
    }
    finish();
    return;
  }
  auto translated = RunSpecFor(as, dir.string(), options_.device);
  engine::RunSpec o = translated.ok() ? *translated : engine::RunSpec();
  // A gang: rank 0 hosts the store at once, so that lathed can assign the
  // other ranks while this one fetches its inputs; they join below.
  const bool gang = as.world_size() > 1;
  absl::StatusOr<std::shared_ptr<engine::Rendezvous>> rendezvous =
      std::shared_ptr<engine::Rendezvous>();
  if (gang && as.rank() == 0) {
    rendezvous = engine::Rendezvous::Host(options_.rendezvous_port,
                                          as.world_size(),
                                          options_.rendezvous_timeout);
    if (rendezvous.ok()) {
      spdlog::info("{} attempt {}: rank 0 of {}, rendezvous on port {}",
                   as.job_id(), as.attempt(), as.world_size(),
                   (*rendezvous)->port());
      absl::MutexLock lock(&mu_);
      attempt->rendezvous =
          absl::StrCat(options_.rendezvous_host, ":", (*rendezvous)->port());
      wake_ = true;
    }
  }

  std::string error;
  bool fetched = translated.ok() && ResolveModel(attempt, &o.model.dir, &error);
  if (fetched && !o.data.training_file.empty()) {
    fetched =
        FetchFile(attempt, job.training_file(), o.data.training_file, &error);
  }
  // A mixture's sources and their validation files, in the job's order;
  // each stage's likewise.
  auto fetch_mixture = [&](const v1::Mixture& wire_mixture,
                           const engine::MixtureSpec& mixture) {
    for (size_t i = 0; fetched && i < mixture.sources.size(); ++i) {
      const v1::MixtureSource& wire = wire_mixture.sources(i);
      const engine::MixtureSourceSpec& source = mixture.sources[i];
      fetched = FetchFile(attempt, wire.file_id(), source.file, &error) &&
                (source.validation_file.empty() ||
                 FetchFile(attempt, wire.validation_file_id(),
                           source.validation_file, &error));
    }
  };
  fetch_mixture(job.training_mixture(), o.data.mixture);
  for (size_t s = 0; fetched && s < o.data.stages.size(); ++s) {
    fetch_mixture(job.stages(s).training_mixture(), o.data.stages[s].mixture);
  }
  if (fetched && !o.data.validation_file.empty()) {
    fetched = FetchFile(attempt, job.validation_file(),
                        o.data.validation_file, &error);
  }
  if (fetched && !o.evaluation.general_file.empty()) {
    fetched = FetchFile(attempt, job.reports().general_file(),
                        o.evaluation.general_file, &error);
  }
  if (fetched && !o.checkpoint.resume_from.empty()) {
    fetched = FetchCheckpoint(attempt, as.resume_from(),
                              o.checkpoint.resume_from, &error);
  }
  // The gang's process group, once every input is here (each rank waits
  // for the others, up to rendezvous_timeout).
  absl::StatusOr<std::unique_ptr<engine::DataParallel>> group =
      std::unique_ptr<engine::DataParallel>();
  if (gang && translated.ok() && fetched && rendezvous.ok()) {
    if (as.rank() > 0) {
      spdlog::info("{} attempt {}: rank {} of {}, joining rank 0 at {}",
                   as.job_id(), as.attempt(), as.rank(), as.world_size(),
                   as.rendezvous());
      rendezvous = engine::Rendezvous::Connect(as.rendezvous(),
                                               options_.rendezvous_timeout);
    }
    absl::StatusOr<engine::Placement> placement =
        engine::ResolvePlacement(o.device);
    if (rendezvous.ok() && placement.ok()) {
      group = engine::DataParallel::Join(
          *rendezvous,
          {.rank = as.rank(),
           .world_size = as.world_size(),
           .gloo_host = options_.rendezvous_host,
           .timeout = options_.rendezvous_timeout},
          placement->device);
    } else if (!placement.ok()) {
      group = placement.status();
    }
  }
  if (!translated.ok()) {
    // lathed resolves every setting: one left unresolved is the platform's.
    fail("platform_error", std::string(translated.status().message()), false);
  } else if (!fetched) {
    fail("fetch_failed", error, false);
  } else if (!rendezvous.ok() || !group.ok()) {
    fail("rendezvous_failed",
         absl::StrCat("rank ", as.rank(), " of ", as.world_size(), " on ",
                      options_.worker_id, ": ",
                      (!rendezvous.ok() ? rendezvous.status() : group.status())
                          .message()),
         false);
  } else {
    Emit(attempt,
         Message(absl::StrCat(
             as.has_resume_from()
                 ? absl::StrCat("Resuming from the checkpoint at step ",
                                as.resume_from().step_number(), " on ")
                 : "Training started on ",
             options_.worker_id, ": ",
             o.self_training.iterations > 0 &&
                     engine::ObjectiveType(o.objective) == "dpo"
                 ? absl::StrCat("SPIN (", o.self_training.iterations,
                                " iterations), ")
             : o.self_training.iterations > 0
                 ? absl::StrCat("RFT (", o.self_training.iterations,
                                " iterations of ",
                                o.self_training.samples_per_prompt,
                                " samples per prompt), ")
             : engine::ObjectiveType(o.objective) == "sft"
                 ? ""
                 : absl::AsciiStrToUpper(engine::ObjectiveType(o.objective)) +
                       " ",
             engine::Lora(o.adapter) != nullptr
                 ? absl::StrCat("LoRA r=", engine::Lora(o.adapter)->rank)
             : std::holds_alternative<engine::S2ftSpec>(o.adapter)
                 ? absl::StrCat(
                       "S²FT (d_ratio ",
                       std::get<engine::S2ftSpec>(o.adapter).d_ratio, ", u_ratio ",
                       std::get<engine::S2ftSpec>(o.adapter).u_ratio, ", o_ratio ",
                       std::get<engine::S2ftSpec>(o.adapter).o_ratio, ", v_ratio ",
                       std::get<engine::S2ftSpec>(o.adapter).v_ratio, ")")
             : std::holds_alternative<engine::PromptTuningSpec>(o.adapter)
                 ? absl::StrCat(
                       "prompt tuning, ",
                       std::get<engine::PromptTuningSpec>(o.adapter)
                           .num_virtual_tokens,
                       " virtual tokens")
                 : std::string("full fine-tuning"),
             " on ", job.model(), ", ",
             o.data.stages.empty()
                 ? absl::StrCat(o.schedule.n_epochs, " epochs")
                 : absl::StrCat(o.data.stages.size(), " stages"),
             ", batch ", o.data.batch_size, ", lr ",
             o.optimizer.learning_rate,
             gang ? absl::StrCat(", data-parallel over ", as.world_size(),
                                 " workers (", (*group)->backend(), ")")
                  : std::string())));
    engine::TrainHooks hooks;
    hooks.data_parallel = group->get();
    int stage = 0;  // of the last step reported
    hooks.on_step = [&](const engine::StepMetrics& m) {
      if (m.stage != stage && m.stage > 0) {
        stage = m.stage;
        const engine::StageSpec& spec = o.data.stages[stage - 1];
        Emit(attempt,
             Message(absl::StrCat(
                 "Stage ", stage, "/", o.data.stages.size(), " \"",
                 spec.name, "\" from step ", m.step,
                 stage > 1 ? absl::StrCat(": from stage ", stage - 1,
                                          "'s weights, a fresh optimizer")
                           : std::string())));
      }
      v1::JobEvent e;
      e.set_type("metrics");
      e.set_level("info");
      e.set_message(absl::StrCat("Step ", m.step, "/", m.total_steps,
                                 ": training loss=", m.loss));
      auto* mm = e.mutable_metrics();
      mm->set_step(m.step);
      mm->set_total_steps(m.total_steps);
      mm->set_train_loss(m.loss);
      mm->set_train_mean_token_accuracy(m.token_accuracy);
      mm->set_learning_rate(m.learning_rate);
      mm->set_tokens_per_second(m.tokens_per_second);
      mm->set_trained_tokens(m.trained_tokens);
      mm->set_stage(m.stage);
      if (m.validation_loss) {
        (*mm->mutable_values())["valid_loss"] = *m.validation_loss;
      }
      if (m.validation_accuracy) {
        (*mm->mutable_values())["valid_mean_token_accuracy"] =
            *m.validation_accuracy;
      }
      for (const auto& [name, value] : m.values) {
        (*mm->mutable_values())[name] = value;
      }
      if (m.iteration > 0) (*mm->mutable_values())["iteration"] = m.iteration;
      {
        absl::MutexLock lock(&mu_);
        attempt->step = m.step;
        attempt->total_steps = m.total_steps;
        attempt->trained_tokens = m.trained_tokens;
      }
      Emit(attempt, std::move(e));
    };
    const bool spin = engine::ObjectiveType(o.objective) == "dpo";
    hooks.on_iteration = [&](const engine::IterationReport& r) {
      if (!r.trained && spin) {
        Emit(attempt,
             Message(absl::StrFormat(
                 "Iteration %d/%d: %d replies generated (%d equal to the real "
                 "one); training DPO on %d pairs against the iteration's "
                 "starting model (%.1f s generating)",
                 r.iteration, r.iterations, r.samples, r.correct,
                 r.rft_examples, r.seconds_sampling)));
      } else if (!r.trained) {
        Emit(attempt,
             Message(absl::StrFormat(
                 "Iteration %d/%d: %d of %d samples correct (%.1f%%), %d kept "
                 "after deduplication; training on %d examples (%.1f s "
                 "sampling)",
                 r.iteration, r.iterations, r.correct, r.samples,
                 100 * r.accepted_fraction(), r.kept, r.rft_examples,
                 r.seconds_sampling)));
      } else {
        Emit(attempt,
             Message(absl::StrCat("Iteration ", r.iteration, "/", r.iterations,
                                  " trained: steps ", r.first_step + 1, "-",
                                  r.last_step, ", loss ", r.first_loss, " -> ",
                                  r.last_loss)));
      }
    };
    hooks.should_stop = [&] {
      if (!attempt->stop.load()) return engine::StopRequest::kNone;
      return attempt->checkpoint_before_stop.load()
                 ? engine::StopRequest::kCheckpointAndStop
                 : engine::StopRequest::kCancel;
    };
    std::string checkpoint_error;
    hooks.on_checkpoint = [&](const engine::CheckpointInfo& c) {
      v1::CheckpointMetrics m;
      m.set_train_loss(c.metrics.loss);
      m.set_train_mean_token_accuracy(c.metrics.token_accuracy);
      if (c.validation_loss) m.set_valid_loss(*c.validation_loss);
      if (c.metrics.validation_accuracy) {
        m.set_valid_mean_token_accuracy(*c.metrics.validation_accuracy);
      }
      m.mutable_values()->insert(c.metrics.values.begin(),
                                 c.metrics.values.end());
      std::string err;
      if (UploadCheckpoint(attempt, c.step, c.dir, c.files, m, &err)) {
        // A stop (pause, shutdown) fails only if its own checkpoint did.
        checkpoint_error.clear();
      } else {
        // Training goes on; the previous checkpoint stays the resume point.
        checkpoint_error = err;
        Emit(attempt, Message(absl::StrCat("Checkpoint at step ", c.step,
                                           " was not stored: ", err),
                              "warn"));
      }
    };
    auto result = engine::Train(o, hooks);
    if (result.ok() && as.rank() > 0) {
      // Rank 0 uploads the gang's result.
      outcome.set_result(v1::AttemptOutcome::RESULT_SUCCEEDED);
      outcome.set_trained_tokens(result->trained_tokens);
    } else if (result.ok()) {
      outcome.set_trained_tokens(result->trained_tokens);
      *outcome.mutable_report() = ReportForResult(o, *result);
      if (result->truncated_examples > 0) {
        Emit(attempt,
             Message(absl::StrCat(result->truncated_examples,
                                  " training examples were longer than ",
                                  o.data.max_seq_len, " tokens and were truncated"),
                     "warn"));
      }
      // A LoRA job's result is the PEFT adapter; a full fine-tuning job's,
      // the whole model folder the engine wrote.
      std::vector<std::string> names;
      for (const auto& entry : fs::directory_iterator(o.output.dir, ec)) {
        if (entry.is_regular_file()) {
          names.push_back(entry.path().filename().string());
        }
      }
      std::sort(names.begin(), names.end());
      bool uploaded = !names.empty();
      if (!uploaded) error = "the engine wrote no result files";
      for (const std::string& name : names) {
        uploaded =
            uploaded &&
            UploadResult(attempt, (fs::path(o.output.dir) / name).string(),
                         name, 0, options_.transfer_patience, &error);
        if (uploaded) outcome.add_result_files(name);
      }
      if (uploaded) {
        outcome.set_result(v1::AttemptOutcome::RESULT_SUCCEEDED);
        Emit(attempt, Message(absl::StrCat(std::holds_alternative<engine::FullSpec>(o.adapter)   ? "Model"
                                           : std::holds_alternative<engine::S2ftSpec>(o.adapter)
                                               ? "Merged model and S²FT diff"
                                               : "Adapter",
                                           " uploaded (", result->steps,
                                           " steps, loss ", result->first_loss,
                                           " -> ", result->last_loss, ")")));
      } else {
        fail("upload_failed", error, false);
      }
    } else if (absl::IsCancelled(result.status())) {
      outcome.set_result(v1::AttemptOutcome::RESULT_CANCELLED);
    } else if (absl::IsAborted(result.status()) && checkpoint_error.empty()) {
      outcome.set_result(v1::AttemptOutcome::RESULT_STOPPED);
    } else if (absl::IsAborted(result.status())) {
      fail("checkpoint_failed", checkpoint_error, false);
    } else if (gang && absl::IsUnavailable(result.status())) {
      // A collective lost its peer (distributed/data_parallel.h): the
      // gang broke, not the job; lathed retries it on a new gang.
      spdlog::error("{} attempt {}: {}", as.job_id(), as.attempt(),
                    std::string(result.status().message()));
      fail("rank_lost", std::string(result.status().message()), false);
    } else {
      spdlog::error("{} attempt {} failed: {}", as.job_id(), as.attempt(),
                    result.status().ToString());
      outcome.set_result(v1::AttemptOutcome::RESULT_FAILED);
      *outcome.mutable_error() = JobErrorFor(result.status());
    }
  }
  finish();
}

bool Agent::Drained() {
  if (abort_.load()) return true;
  if (!stopping_.load()) return false;
  absl::MutexLock lock(&mu_);
  return attempts_.empty() || absl::Now() > drain_deadline_;
}

void Agent::Run() {
  absl::Duration backoff = absl::Milliseconds(200);
  while (!Drained()) {
    auto ctx = NewContext();
    auto stream = stub_->Connect(ctx.get());
    bool connected = false;
    while (!Drained()) {
      if (!stream->Write(BuildReport())) break;
      // One directive per report, or several (one per attempt) from a
      // server answering a worker of several attempts.
      v1::WorkerDirective d;
      bool read = true;
      do {
        if (!(read = stream->Read(&d))) break;
        if (!connected) {
          spdlog::info("connected to lathed at {} as {}", options_.server,
                       options_.worker_id);
          connected = true;
          backoff = absl::Milliseconds(200);
        }
        Apply(d);
      } while (d.more());
      if (!read) break;
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&wake_), options_.heartbeat);
    }
    stream->WritesDone();
    grpc::Status st = stream->Finish();
    if (Drained()) break;
    spdlog::warn("lost the stream to lathed at {} ({}); reconnecting within {}",
                 options_.server, st.error_message(),
                 absl::FormatDuration(backoff));
    AwaitLathed(absl::Now() + backoff, [this] { return Drained(); });
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
}

void Agent::AwaitLathed(absl::Time until,
                        const std::function<bool()>& give_up) {
  bool down = channel_->GetState(false) != GRPC_CHANNEL_READY;
  // gRPC's own reconnect backoff grows to 2 minutes while connecting fails
  // and fails calls at once meanwhile: without a reset a worker would sit
  // idle long after lathed is back from a restart or an outage.
  if (down) grpc::experimental::ChannelResetConnectionBackoff(channel_.get());
  while (absl::Now() < until && !give_up()) {
    absl::Time slice = std::min(until, absl::Now() + absl::Milliseconds(100));
    if (!down) {
      absl::SleepFor(slice - absl::Now());
    } else if (channel_->WaitForConnected(absl::ToChronoTime(slice))) {
      return;
    }
  }
}

}  // namespace lathe::worker
