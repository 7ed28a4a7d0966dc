// The models a merge reads: the base, and each input as a task vector
// tau_i = theta_i - theta_0 per tensor, read one tensor at a time.
#ifndef LATHE_WORKER_ENGINE_MERGE_MERGE_INPUT_H_
#define LATHE_WORKER_ENGINE_MERGE_MERGE_INPUT_H_

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/merge/merge_spec.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/model/weights.h"

namespace lathe::engine {

// The base model folder of a merge, memory-mapped. Thread-compatible.
class MergeBase {
 public:
  // Errors as LoadModelConfig / ModelWeightsReader::Open, marked kModel.
  static absl::StatusOr<std::unique_ptr<MergeBase>> Open(
      const std::string& dir);

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  torch::ScalarType dtype() const { return dtype_; }  // of its weight files
  // Every weight's shape, by Hugging Face name.
  const std::map<std::string, std::vector<int64_t>>& shapes() const {
    return weights_->shapes();
  }
  // theta_0 of `name`, float32 (errors as ModelWeightsReader::Read).
  absl::StatusOr<torch::Tensor> Read(const std::string& name) const {
    return weights_->Read(name);
  }

 private:
  MergeBase() = default;

  std::string dir_;
  ModelConfig config_;
  torch::ScalarType dtype_ = torch::kFloat32;
  std::unique_ptr<ModelWeightsReader> weights_;
};

// One fine-tune of the base: a full model folder, whose task vector is
// theta_i - theta_0 for every tensor, or a PEFT LoRA adapter, whose task
// vector is s B A (s = alpha / r, alpha / sqrt(r) with use_rslora) on each
// adapted projection and zero elsewhere. Thread-compatible; the base passed
// to Open must outlive it.
class MergeInput {
 public:
  enum class Kind { kModel, kLora };

  // Opens `spec.dir` as a model folder (it has config.json) or a LoRA
  // adapter (adapter_config.json). INVALID_ARGUMENT (kUserOptions, field
  // "merge.inputs"), its message starting with `input "<name>": `, when the
  // folder is neither, when its architecture, tensor names or shapes differ
  // from the base's, when an adapter targets a layer or projection the base
  // lacks, its factors do not fit the base's weights, or it is DoRA (whose
  // delta is not s B A).
  static absl::StatusOr<std::unique_ptr<MergeInput>> Open(
      const MergeInputSpec& spec, const MergeBase& base);

  const std::string& name() const { return name_; }
  Kind kind() const { return kind_; }
  // The projections a LoRA input adapts (empty for a model).
  const std::vector<std::string>& target_modules() const {
    return target_modules_;
  }

  // tau of tensor `name` as float64 CPU: theta_i - theta_0 (`theta_0`, the
  // base's tensor in float64, is subtracted in float64, which is exact for
  // float32, float16 and bfloat16 weights), s B A, or zeros.
  absl::StatusOr<torch::Tensor> TaskVector(const std::string& name,
                                           const torch::Tensor& theta_0) const;

 private:
  struct Factors {
    torch::Tensor a;  // [r, in] float32
    torch::Tensor b;  // [out, r] float32
  };

  MergeInput(std::string name, Kind kind)
      : name_(std::move(name)), kind_(kind) {}

  absl::Status OpenModel(const std::string& dir, const MergeBase& base);
  absl::Status OpenLora(const std::string& dir, const MergeBase& base);

  const std::string name_;
  const Kind kind_;
  std::unique_ptr<ModelWeightsReader> weights_;  // kModel
  std::map<std::string, Factors> factors_;       // kLora, by weight name
  double scale_ = 0;                             // kLora
  std::vector<std::string> target_modules_;      // kLora
};

// "model.layers.{layer}.self_attn.q_proj.weight" for module "q_proj".
std::string ProjectionWeightName(int64_t layer, const std::string& module);

// The decoder layer of a weight named "model.layers.{l}. ...", or -1.
int LayerOfWeight(const std::string& name);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_MERGE_MERGE_INPUT_H_
