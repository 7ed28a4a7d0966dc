// After-job reports (METHODS.md §9): what a fine-tune made the model forget
// on a held-out general set, and the intruder dimensions of its LoRA
// updates.
#ifndef LATHE_WORKER_ENGINE_REPORTS_REPORTS_H_
#define LATHE_WORKER_ENGINE_REPORTS_REPORTS_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "worker/engine/data/chat_data.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/reports/report.h"

namespace lathe::engine {

// A held-out loss: the token-weighted mean cross-entropy Σ CE / Σ tokens.
struct HeldOutLoss {
  double loss = 0;
  int64_t tokens = 0;  // the targets it is over
};

// `model`'s loss on `data` without gradients or dropout, over each
// example's loss-mask targets (`all_tokens` false: the assistant tokens) or
// over every next token (`all_tokens` true), in batches of `batch_size`
// padded rows; `adapters` false runs the base alone (the adapter
// bypassed, virtual tokens too). With adapters, examples must already carry
// prompt tuning's placeholder tokens when the model has virtual tokens.
HeldOutLoss HeldOutLossOf(const LlamaModel& model,
                          const std::vector<Example>& data, bool all_tokens,
                          int batch_size, int32_t pad_id,
                          bool adapters = true);

// For the top `top_k` singular vectors of `w_ft` (by singular value), the
// largest |cosine| of each left singular vector with any left singular
// vector of `w0` (§9.2; both [out, in], reduced SVDs in float32): the
// intruder similarity. Fewer than top_k when the matrix has fewer.
std::vector<double> IntruderSimilarities(const torch::Tensor& w0,
                                         const torch::Tensor& w_ft,
                                         int top_k);

// Every LoRA-adapted projection of `model` (W0 its base weight, W_ft the
// weight it applies: W0 + s B A, or DoRA's), in the order of Weights().
std::vector<IntruderMatrix> LoraIntruders(const LlamaModel& model, int top_k,
                                          double epsilon);

// PEFT's reduce_intruder_dimension (peft v0.20 lora/intruders.py) for one
// matrix, in float32: with W_ft = W0 + scale B A and its reduced SVD
// U S V^T, the intruders I are those of the top `top_k` left singular
// vectors whose largest |cosine| with W0's is below `epsilon`; then
// W_mit = W_ft + (lambda - 1) U_I S_I V_I^T and (W_mit - W0) / scale is
// re-factorised by SVD to `rank`: B' = U' sqrt(S'), A' = sqrt(S') V'^T (the
// first `rank` triplets). Without intruders B and A come back unchanged.
struct MitigatedFactors {
  torch::Tensor b;  // [out, rank]
  torch::Tensor a;  // [rank, in]
  int intruders = 0;
  double min_similarity = 1;
};
MitigatedFactors MitigateIntruderFactors(const torch::Tensor& w0,
                                         const torch::Tensor& b,
                                         const torch::Tensor& a, double scale,
                                         int top_k, double epsilon,
                                         double lambda, int rank);

// MitigateIntruderFactors on every LoRA-adapted projection of `model`, its
// factors replaced in place; what each had, in the order of Weights().
std::vector<IntruderMatrix> MitigateIntruders(LlamaModel& model, int top_k,
                                              double epsilon, double lambda,
                                              double scale, int rank);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_REPORTS_REPORTS_H_
