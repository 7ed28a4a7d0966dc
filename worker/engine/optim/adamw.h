// AdamW (Loshchilov & Hutter) over named tensors, computing what
// torch.optim.AdamW computes, with its state in the open so that a
// checkpoint can save and restore it exactly.
#ifndef LATHE_WORKER_ENGINE_OPTIM_ADAMW_H_
#define LATHE_WORKER_ENGINE_OPTIM_ADAMW_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/engine/model/weights.h"

namespace lathe::engine {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // decoupled: p -= lr * weight_decay * p
};

// Each parameter has its own step count (as torch's per-parameter
// state["step"]): a step without a gradient for it does not count.
//
// Thread-compatible. The parameters are borrowed: they must outlive the
// optimizer and be leaf tensors that require grad.
class AdamW {
 public:
  struct Param {
    std::string name;  // unique; keys the moments in SaveState
    torch::Tensor value;
    bool decay = true;  // whether weight_decay applies to it
  };

  AdamW(std::vector<Param> params, const AdamWOptions& options);

  // Replaces the set of parameters, for a method that trains a changing
  // subset (LISA, HFT per epoch; adapters/selection.h). A parameter named as
  // before keeps its moments and step count; a new one starts fresh (zero
  // moments, step 0, as on its first step in torch); one no longer named
  // has its state dropped, so that its memory is freed.
  void SetParams(std::vector<Param> params);

  // Clears the gradients of every parameter.
  void ZeroGrad();

  // One update with learning rate `lr` from the parameters' gradients
  // (a parameter without a gradient is left as it is).
  void Step(double lr);

  // Step() calls so far.
  int64_t steps() const { return steps_; }

  // The first and second moments and the step count of every parameter,
  // keyed "exp_avg/<name>", "exp_avg_sq/<name>" and "step/<name>" (a
  // float32 scalar).
  TensorMap State() const;

  // Restores `steps` and what State() returned, for the current parameters.
  // A parameter without "step/<name>" (a checkpoint from before per-
  // parameter counts) gets `steps`. INVALID_ARGUMENT naming the tensor when
  // one is missing or mis-shaped; the optimizer is unchanged then.
  absl::Status Restore(int64_t steps, const TensorMap& state);

  std::vector<torch::Tensor> tensors() const;

 private:
  std::vector<Param> params_;
  AdamWOptions options_;
  int64_t steps_ = 0;
  std::vector<torch::Tensor> exp_avg_;     // parallel to params_
  std::vector<torch::Tensor> exp_avg_sq_;  // parallel to params_
  std::vector<int64_t> param_steps_;       // parallel to params_
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_OPTIM_ADAMW_H_
