#include "worker/agent/job_options.h"

#include "absl/strings/str_cat.h"

namespace lathe::worker {
namespace {

struct SchedulerName {
  v1::LrScheduler wire;
  const char* engine;  // TrainOptions::lr_scheduler
};
constexpr SchedulerName kSchedulers[] = {
    {v1::LR_SCHEDULER_LINEAR, "linear"},
    {v1::LR_SCHEDULER_COSINE, "cosine"},
    {v1::LR_SCHEDULER_CONSTANT, "constant"},
};

}  // namespace

absl::StatusOr<engine::TrainOptions> TrainOptionsForJob(const v1::Job& job) {
  engine::TrainOptions o;
  o.base_model_name = job.model();
  o.seed = static_cast<uint64_t>(job.seed());
  switch (job.adapter()) {
    case v1::ADAPTER_TYPE_LORA:
      o.method = "lora";
      break;
    case v1::ADAPTER_TYPE_FULL:
      o.method = "full";
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("adapter: ", v1::AdapterType_Name(job.adapter()), " is not resolved"));
  }
  const v1::Hyperparameters& hp = job.method().supervised().hyperparameters();
  o.n_epochs = hp.n_epochs();
  o.batch_size = hp.batch_size();
  o.learning_rate = hp.learning_rate();
  o.warmup_steps = hp.warmup_steps();
  o.lr_scheduler.clear();
  for (const SchedulerName& s : kSchedulers) {
    if (s.wire == hp.lr_scheduler()) o.lr_scheduler = s.engine;
  }
  if (o.lr_scheduler.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "method.supervised.hyperparameters.lr_scheduler: ",
        v1::LrScheduler_Name(hp.lr_scheduler()), " is not resolved"));
  }
  o.weight_decay = hp.weight_decay();
  o.gradient_accumulation_steps = hp.gradient_accumulation_steps();
  o.max_seq_len = hp.max_seq_len();
  o.eval_every = hp.eval_every_steps();
  o.max_grad_norm = hp.max_grad_norm();
  o.checkpoint_every = hp.checkpoint_every_steps();
  if (job.adapter() == v1::ADAPTER_TYPE_LORA) {
    const v1::LoraConfig& lora = job.lora();
    o.lora.rank = lora.rank();
    o.lora.alpha = lora.alpha();
    o.lora.dropout = lora.dropout();
    o.lora.use_rslora = lora.use_rslora();
    o.lora.target_modules.assign(lora.target_modules().begin(), lora.target_modules().end());
  }
  return o;
}

v1::Job JobForTrainOptions(const engine::TrainOptions& o) {
  v1::Job job;
  job.set_model(o.base_model_name);
  job.set_seed(static_cast<int64_t>(o.seed));
  job.set_adapter(o.method == "full" ? v1::ADAPTER_TYPE_FULL : v1::ADAPTER_TYPE_LORA);
  job.mutable_method()->set_type("supervised");
  v1::Hyperparameters& hp = *job.mutable_method()->mutable_supervised()->mutable_hyperparameters();
  hp.set_n_epochs(o.n_epochs);
  hp.set_batch_size(o.batch_size);
  hp.set_learning_rate(o.learning_rate);
  hp.set_warmup_steps(o.warmup_steps);
  for (const SchedulerName& s : kSchedulers) {
    if (o.lr_scheduler == s.engine) hp.set_lr_scheduler(s.wire);
  }
  hp.set_weight_decay(o.weight_decay);
  hp.set_gradient_accumulation_steps(o.gradient_accumulation_steps);
  hp.set_max_seq_len(o.max_seq_len);
  hp.set_eval_every_steps(o.eval_every);
  hp.set_max_grad_norm(o.max_grad_norm);
  hp.set_checkpoint_every_steps(o.checkpoint_every);
  if (o.method != "full") {
    v1::LoraConfig& lora = *job.mutable_lora();
    lora.set_rank(o.lora.rank);
    lora.set_alpha(o.lora.alpha);
    lora.set_dropout(o.lora.dropout);
    lora.set_use_rslora(o.lora.use_rslora);
    for (const std::string& m : o.lora.target_modules) lora.add_target_modules(m);
  }
  return job;
}

}  // namespace lathe::worker
