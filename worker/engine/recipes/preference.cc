#include "worker/engine/recipes/preference.h"

#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/adapters/adapter.h"
#include "worker/engine/data/batch.h"
#include "worker/engine/data/packing.h"
#include "worker/engine/data/preference_data.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/loss/chunked_cross_entropy.h"
#include "worker/engine/loss/preference.h"
#include "worker/engine/model/weights.h"
#include "worker/engine/recipes/loop.h"

namespace lathe::engine {
namespace {

// The file of a checkpoint that holds full fine-tuning's reference.
constexpr char kReferenceFile[] = "reference_logps.safetensors";

// What one forward pass over a micro-batch's 2n rows (chosen first) gives.
struct RowLogps {
  torch::Tensor sum;    // [2n] float32: log-probabilities summed over the
                        // completion tokens
  torch::Tensor count;  // [2n] float32: completion tokens
  // With `whole_chosen`: the NLL summed over every target of the chosen
  // rows, prompt included (ORPO's), and their number.
  torch::Tensor chosen_nll_sum;
  int64_t chosen_nll_tokens = 0;
  int64_t chosen_correct = 0;  // argmax hits on chosen completion tokens
  int64_t chosen_tokens = 0;
  int64_t tokens = 0;
  int64_t padding = 0;
};

// Figures of several micro-batches, each weighted by its share of pairs.
struct Means {
  std::map<std::string, double> values;
  double loss = 0;
  int64_t chosen_correct = 0, chosen_tokens = 0;

  void Add(const std::map<std::string, double>& v, double share) {
    for (const auto& [name, value] : v) values[name] += value * share;
  }
  double token_accuracy() const {
    return static_cast<double>(chosen_correct) /
           std::max<int64_t>(chosen_tokens, 1);
  }
};

struct PreferenceData {
  PreferenceDataset train;
  std::optional<PreferenceDataset> valid;
};

absl::StatusOr<PreferenceData> LoadData(const RunSpec& spec,
                                        const ModelSetup& setup,
                                        int max_prompt_len) {
  const DataSpec& d = spec.data;
  auto load = [&](bool validation) -> absl::StatusOr<PreferenceDataset> {
    absl::StatusOr<PreferenceDataset> data = LoadPreferenceDataset(
        validation ? d.validation_file : d.training_file, *setup.tokenizer,
        setup.chat_template, max_prompt_len, d.max_seq_len,
        validation ? d.validation_file_name : d.training_file_name);
    if (!data.ok()) {
      return WithErrorKind(data.status(), ErrorKind::kUserData,
                           validation ? "validation_file" : "training_file");
    }
    return data;
  };
  PreferenceData data;
  ASSIGN_OR_RETURN(data.train, load(false));
  if (!d.validation_file.empty()) {
    ASSIGN_OR_RETURN(data.valid, load(true));
  }
  return data;
}

// What DPO and ORPO share: the pairs, and the forward pass over them.
class PreferenceObjective : public Objective {
 public:
  PreferenceObjective(const RunSpec& spec, const LlamaModel& model,
                      PreferenceData data, int32_t pad_id,
                      int64_t chunk_tokens)
      : spec_(spec),
        model_(model),
        data_(std::move(data)),
        pad_id_(pad_id),
        chunk_tokens_(chunk_tokens) {}

  size_t train_examples() const override { return data_.train.pairs.size(); }
  int64_t truncated_examples() const override { return data_.train.truncated; }
  bool has_validation() const override { return data_.valid.has_value(); }

  absl::StatusOr<StepWork> Step(
      const std::vector<std::vector<size_t>>& micro_batches,
      int64_t) override {
    size_t pairs = 0;
    for (const auto& indices : micro_batches) pairs += indices.size();
    StepWork work;
    Means means;
    for (const std::vector<size_t>& indices : micro_batches) {
      const double share = static_cast<double>(indices.size()) / pairs;
      RowLogps policy;
      std::map<std::string, double> values;
      torch::Tensor loss = PairLoss(data_.train, /*validation=*/false,
                                    indices, /*grad=*/true,
                                    &work.loss_peak_bytes, policy, values);
      (loss * share).backward();
      means.loss += loss.item<double>() * share;
      means.Add(values, share);
      means.chosen_correct += policy.chosen_correct;
      means.chosen_tokens += policy.chosen_tokens;
      work.tokens += policy.tokens;
      work.padding += policy.padding;
    }
    work.loss = means.loss;
    work.token_accuracy = means.token_accuracy();
    work.values = std::move(means.values);
    work.weight = static_cast<double>(pairs);
    work.accuracy_weight = static_cast<double>(means.chosen_tokens);
    return work;
  }
  bool data_parallel() const override { return true; }

  // The same figures over every validation pair, batch_size pairs at a time.
  EvalWork Evaluate() override {
    torch::NoGradGuard no_grad;
    const std::vector<PreferencePair>& pairs = data_.valid->pairs;
    const size_t batch = spec_.data.batch_size;
    Means means;
    for (size_t first = 0; first < pairs.size(); first += batch) {
      std::vector<size_t> indices(std::min(batch, pairs.size() - first));
      std::iota(indices.begin(), indices.end(), first);
      const double share =
          static_cast<double>(indices.size()) / pairs.size();
      RowLogps policy;
      std::map<std::string, double> values;
      torch::Tensor loss = PairLoss(*data_.valid, /*validation=*/true,
                                    indices, /*grad=*/false, nullptr, policy,
                                    values);
      means.loss += loss.item<double>() * share;
      means.Add(values, share);
      means.chosen_correct += policy.chosen_correct;
      means.chosen_tokens += policy.chosen_tokens;
    }
    return {.loss = means.loss,
            .token_accuracy = means.token_accuracy(),
            .values = std::move(means.values)};
  }

 protected:
  // The loss of pairs `indices` of `data` (a scalar, the mean over them),
  // with the policy's RowLogps and the figures to report.
  virtual torch::Tensor PairLoss(const PreferenceDataset& data,
                                 bool validation,
                                 const std::vector<size_t>& indices,
                                 bool grad, int64_t* peak, RowLogps& policy,
                                 std::map<std::string, double>& values) = 0;

  // The rows of pairs[indices] as one model input: with `whole_chosen`,
  // also the same rows with every token of the chosen ones a target.
  struct PairBatch {
    int64_t n = 0;  // pairs
    Batch batch;
    std::optional<Batch> whole;
  };
  PairBatch MakePairBatch(const std::vector<PreferencePair>& pairs,
                          const std::vector<size_t>& indices,
                          bool whole_chosen) const {
    PairBatch out;
    out.n = static_cast<int64_t>(indices.size());
    std::vector<Example> rows = PairRows(pairs, indices);
    std::vector<size_t> all(rows.size());
    std::iota(all.begin(), all.end(), 0);
    const bool packing = spec_.data.packing;
    out.batch =
        ToDevice(MakeInput(rows, all, packing, pad_id_), model_.device());
    if (whole_chosen) {
      for (int64_t i = 0; i < out.n; ++i) {
        std::fill(rows[i].loss_mask.begin() + 1, rows[i].loss_mask.end(), 1);
      }
      out.whole = ToDevice(MakeInput(rows, all, packing, pad_id_),
                           model_.device());
    }
    return out;
  }

  // Log-probabilities of `rows`; with `adapters` false the base alone
  // (LoRA's reference); with rows.whole, also the NLL of the chosen rows'
  // every token. Gradients flow when `grad` and grad mode is on.
  RowLogps Forward(const PairBatch& rows, bool grad, bool adapters,
                   int64_t* peak) const {
    const int64_t n = rows.n;
    const Batch& batch = rows.batch;
    const std::optional<Batch>& whole = rows.whole;
    const torch::Tensor hidden = model_.Hidden(
        batch.input_ids, batch.layout,
        {.training = false,  // no dropout, as TRL's disable_dropout
         .checkpoint_layers = grad && spec_.device.activation_checkpointing,
         .adapters = adapters});
    const CausalTargets t =
        SelectCausalTargets(hidden, whole ? *whole : batch);
    const TokenLogps token =
        ChunkedTokenLogps(t.hidden, model_.head(), t.labels, chunk_tokens_,
                          peak);
    torch::Tensor completion =
        whole ? batch.loss_mask.slice(1, 1).reshape({-1}).index_select(
                    0, t.rows)
              : torch::ones_like(t.labels, torch::kBool);
    const torch::Tensor weight = completion.to(torch::kFloat32);
    RowLogps out;
    out.sum = torch::zeros({2 * n}, token.logps.options())
                  .index_add(0, t.example, token.logps * weight);
    out.count = torch::zeros({2 * n}, weight.options())
                    .index_add(0, t.example, weight);
    const torch::Tensor chosen = t.example.lt(n);
    if (whole) {
      out.chosen_nll_sum = -(token.logps * chosen.to(torch::kFloat32)).sum();
      out.chosen_nll_tokens = chosen.sum().item<int64_t>();
    }
    out.chosen_correct =
        (token.correct & completion & chosen).sum().item<int64_t>();
    out.chosen_tokens = (completion & chosen).sum().item<int64_t>();
    out.tokens = batch.tokens;
    out.padding = batch.padding;
    return out;
  }

  const RunSpec& spec_;
  const LlamaModel& model_;
  PreferenceData data_;
  const int32_t pad_id_;
  const int64_t chunk_tokens_;
};

class DpoObjective : public PreferenceObjective {
 public:
  DpoObjective(const RunSpec& spec, const DpoSpec& dpo,
               const LlamaModel& model, PreferenceData data, int32_t pad_id,
               PreferenceLoss loss)
      : PreferenceObjective(spec, model, std::move(data), pad_id,
                            dpo.loss_chunk_tokens),
        dpo_(dpo),
        precomputed_(std::holds_alternative<FullSpec>(spec.adapter) ||
                     dpo.reference == "precomputed"),
        options_{.loss = loss,
                 .beta = dpo.beta,
                 .label_smoothing = dpo.label_smoothing} {}

  // Full fine-tuning (and reference "precomputed"): the initial model's
  // log-probabilities, before any step changes it.
  absl::Status Prepare() override {
    if (!precomputed_) return absl::OkStatus();
    torch::NoGradGuard no_grad;
    reference_["train"] = ReferenceOf(data_.train);
    if (data_.valid) reference_["valid"] = ReferenceOf(*data_.valid);
    return absl::OkStatus();
  }

  absl::Status SaveState(const std::string& dir) const override {
    if (reference_.empty()) return absl::OkStatus();
    TensorMap tensors;
    for (const auto& [name, logps] : reference_) tensors[name] = logps.cpu();
    return SaveSafetensors(
        absl::StrCat(dir, "/", kReferenceFile), tensors,
        {{"what", "DPO reference log-probabilities, [2, pairs]: chosen, "
                  "rejected"}});
  }

  absl::Status LoadState(const std::string& dir) override {
    if (!precomputed_) return absl::OkStatus();
    const std::string path = absl::StrCat(dir, "/", kReferenceFile);
    ASSIGN_OR_RETURN(TensorMap tensors, LoadSafetensors(path));
    for (const auto& [name, data] :
         {std::pair<std::string, const PreferenceDataset*>{"train",
                                                           &data_.train},
          {"valid", data_.valid ? &*data_.valid : nullptr}}) {
      if (data == nullptr) continue;
      auto it = tensors.find(name);
      const int64_t pairs = static_cast<int64_t>(data->pairs.size());
      if (it == tensors.end() || it->second.dim() != 2 ||
          it->second.size(0) != 2 || it->second.size(1) != pairs) {
        return absl::DataLossError(absl::StrCat(
            path, ": no [2, ", pairs, "] tensor \"", name,
            "\" (the reference of this run's ", name, " pairs)"));
      }
      reference_[name] = it->second.to(model_.device());
    }
    return absl::OkStatus();
  }

  std::string Describe() const override {
    return absl::StrCat(
        "DPO ", dpo_.loss_type, " beta ", dpo_.beta,
        dpo_.label_smoothing > 0
            ? absl::StrCat(" label smoothing ", dpo_.label_smoothing)
            : "",
        dpo_.rpo_alpha > 0 ? absl::StrCat(" RPO alpha ", dpo_.rpo_alpha) : "",
        ", reference: ",
        !precomputed_ ? "the base (adapter off)"
                      : "precomputed log-probabilities",
        ", loss chunks of ", dpo_.loss_chunk_tokens, " tokens");
  }

 protected:
  torch::Tensor PairLoss(const PreferenceDataset& data, bool validation,
                         const std::vector<size_t>& indices, bool grad,
                         int64_t* peak, RowLogps& policy,
                         std::map<std::string, double>& values) override {
    const int64_t n = static_cast<int64_t>(indices.size());
    const PairBatch rows = MakePairBatch(data.pairs, indices, false);
    policy = Forward(rows, grad, /*adapters=*/true, peak);
    torch::Tensor reference;
    if (!precomputed_) {
      torch::NoGradGuard no_grad;
      reference = Sequence(Forward(rows, false, /*adapters=*/false, nullptr));
    } else {
      const torch::Tensor index =
          torch::tensor(std::vector<int64_t>(indices.begin(), indices.end()),
                        torch::kInt64)
              .to(model_.device());
      reference = reference_.at(validation ? "valid" : "train")
                      .index_select(1, index)
                      .reshape({-1});
    }
    const torch::Tensor mine = Sequence(policy);
    const PreferenceStats stats =
        PreferenceLossOf({.policy_chosen = mine.slice(0, 0, n),
                          .policy_rejected = mine.slice(0, n),
                          .reference_chosen = reference.slice(0, 0, n),
                          .reference_rejected = reference.slice(0, n)},
                         options_);
    values = stats.Named();
    torch::Tensor loss = stats.loss;
    if (dpo_.rpo_alpha > 0) {
      // RPO: the mean cross-entropy over the chosen completions' tokens.
      const torch::Tensor nll = -policy.sum.slice(0, 0, n).sum() /
                                policy.count.slice(0, 0, n).sum();
      values["nll_loss"] = nll.item<double>();
      loss = loss + dpo_.rpo_alpha * nll;
    }
    return loss;
  }

 private:
  // The sequence log-probabilities the loss takes: summed, or for IPO
  // averaged over the completion's tokens.
  torch::Tensor Sequence(const RowLogps& r) const {
    return options_.loss == PreferenceLoss::kIpo ? r.sum / r.count : r.sum;
  }

  // [2, pairs]: the model's chosen and rejected log-probabilities now.
  torch::Tensor ReferenceOf(const PreferenceDataset& data) const {
    const size_t batch = spec_.data.batch_size;
    std::vector<torch::Tensor> chosen, rejected;
    for (size_t first = 0; first < data.pairs.size(); first += batch) {
      std::vector<size_t> indices(std::min(batch, data.pairs.size() - first));
      std::iota(indices.begin(), indices.end(), first);
      const int64_t n = static_cast<int64_t>(indices.size());
      const torch::Tensor s =
          Sequence(Forward(MakePairBatch(data.pairs, indices, false), false,
                           /*adapters=*/true, nullptr));
      chosen.push_back(s.slice(0, 0, n));
      rejected.push_back(s.slice(0, n));
    }
    return torch::stack({torch::cat(chosen), torch::cat(rejected)});
  }

  const DpoSpec& dpo_;
  const bool precomputed_;  // else the adapter-off base
  const PreferenceOptions options_;
  std::map<std::string, torch::Tensor> reference_;  // "train", "valid"
};

class OrpoObjective : public PreferenceObjective {
 public:
  OrpoObjective(const RunSpec& spec, const OrpoSpec& orpo,
                const LlamaModel& model, PreferenceData data, int32_t pad_id)
      : PreferenceObjective(spec, model, std::move(data), pad_id,
                            orpo.loss_chunk_tokens),
        orpo_(orpo) {}

  std::string Describe() const override {
    return absl::StrCat("ORPO lambda ", orpo_.lambda, ", loss chunks of ",
                        orpo_.loss_chunk_tokens, " tokens");
  }

 protected:
  torch::Tensor PairLoss(const PreferenceDataset& data, bool,
                         const std::vector<size_t>& indices, bool grad,
                         int64_t* peak, RowLogps& policy,
                         std::map<std::string, double>& values) override {
    const int64_t n = static_cast<int64_t>(indices.size());
    policy = Forward(MakePairBatch(data.pairs, indices, /*whole_chosen=*/true),
                     grad, /*adapters=*/true, peak);
    const torch::Tensor mean = policy.sum / policy.count;
    const OrpoStats stats =
        OrpoLossOf(mean.slice(0, 0, n), mean.slice(0, n), orpo_.lambda);
    const torch::Tensor nll =
        policy.chosen_nll_sum / static_cast<double>(policy.chosen_nll_tokens);
    values = stats.Named();
    values["log_odds_ratio"] = stats.log_odds_ratio;
    values["log_odds_chosen"] = stats.log_odds_chosen;
    values["nll_loss"] = nll.item<double>();
    return nll + stats.loss;
  }

 private:
  const OrpoSpec& orpo_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Objective>> MakeDpoObjective(
    const RunSpec& spec, const DpoSpec& dpo, const ModelSetup& setup) {
  ASSIGN_OR_RETURN(const PreferenceLoss loss,
                   WithErrorKind(ParsePreferenceLoss(dpo.loss_type),
                                 ErrorKind::kUserOptions,
                                 "method.dpo.hyperparameters.loss_type"));
  ASSIGN_OR_RETURN(PreferenceData data,
                   LoadData(spec, setup, dpo.max_prompt_len));
  return std::unique_ptr<Objective>(
      std::make_unique<DpoObjective>(spec, dpo, *setup.model, std::move(data),
                                     setup.tokenizer->pad_id(), loss));
}

absl::StatusOr<TrainResult> RunDpo(const RunSpec& spec, const DpoSpec& dpo,
                                   const TrainHooks& hooks) {
  ASSIGN_OR_RETURN(const PreferenceLoss loss,
                   WithErrorKind(ParsePreferenceLoss(dpo.loss_type),
                                 ErrorKind::kUserOptions,
                                 "method.dpo.hyperparameters.loss_type"));
  ASSIGN_OR_RETURN(ModelSetup setup, SetUpModel(spec));
  ASSIGN_OR_RETURN(const std::optional<GeneralSet> general,
                   LoadGeneralSet(spec, setup));
  ASSIGN_OR_RETURN(PreferenceData data,
                   LoadData(spec, setup, dpo.max_prompt_len));
  DpoObjective objective(spec, dpo, *setup.model, std::move(data),
                         setup.tokenizer->pad_id(), loss);
  return RunLoop(spec, *setup.model, objective, hooks,
                 general.has_value() ? &*general : nullptr);
}

absl::StatusOr<TrainResult> RunOrpo(const RunSpec& spec, const OrpoSpec& orpo,
                                    const TrainHooks& hooks) {
  ASSIGN_OR_RETURN(ModelSetup setup, SetUpModel(spec));
  ASSIGN_OR_RETURN(const std::optional<GeneralSet> general,
                   LoadGeneralSet(spec, setup));
  ASSIGN_OR_RETURN(PreferenceData data,
                   LoadData(spec, setup, orpo.max_prompt_len));
  OrpoObjective objective(spec, orpo, *setup.model, std::move(data),
                          setup.tokenizer->pad_id());
  return RunLoop(spec, *setup.model, objective, hooks,
                 general.has_value() ? &*general : nullptr);
}

}  // namespace lathe::engine
