#include "worker/engine/reports/reports.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "worker/engine/data/batch.h"
#include "worker/engine/loss/chunked_cross_entropy.h"

namespace lathe::engine {

HeldOutLoss HeldOutLossOf(const LlamaModel& model,
                          const std::vector<Example>& data, bool all_tokens,
                          int batch_size, int32_t pad_id, bool adapters) {
  torch::NoGradGuard no_grad;
  // Every next token after the first real one (prompt tuning's
  // placeholders are never targets, nor is the token after them).
  const size_t first_target =
      static_cast<size_t>(adapters ? model.num_virtual_tokens() : 0) + 1;
  std::vector<Example> all;
  if (all_tokens) {
    all = data;
    for (Example& e : all) {
      for (size_t t = 0; t < e.loss_mask.size(); ++t) {
        e.loss_mask[t] = t >= first_target ? 1 : 0;
      }
    }
  }
  const std::vector<Example>& examples = all_tokens ? all : data;
  double total = 0;
  int64_t targets = 0;
  const size_t step = static_cast<size_t>(std::max(batch_size, 1));
  for (size_t first = 0; first < examples.size(); first += step) {
    std::vector<size_t> indices(std::min(step, examples.size() - first));
    std::iota(indices.begin(), indices.end(), first);
    const Batch batch =
        ToDevice(MakeBatch(examples, indices, pad_id), model.device());
    if (Targets(batch) == 0) continue;
    const torch::Tensor hidden = model.Hidden(
        batch.input_ids, batch.layout,
        {.training = false, .adapters = adapters});
    const LossStats stats =
        ChunkedCausalLmLoss(hidden, model.head(), batch, /*chunk_tokens=*/1024);
    total += stats.loss.item<double>() * stats.targets;
    targets += stats.targets;
  }
  return {.loss = targets > 0 ? total / targets : 0, .tokens = targets};
}

namespace {

// The left singular vectors of a float32 reduced SVD (full_matrices=False,
// as the paper's code and PEFT; singular values sorted, largest first).
torch::Tensor LeftSingular(const torch::Tensor& w) {
  return std::get<0>(torch::linalg_svd(w.to(torch::kFloat32), /*full_matrices=*/false));
}

// For the top `top_k` columns of `u`: the largest |<U[:, i], U0[:, j]>|
// over j, as float64 on the CPU.
std::vector<double> TopSimilarities(const torch::Tensor& u, const torch::Tensor& u0,
                                    int top_k) {
  const int64_t k = std::min<int64_t>(top_k, u.size(1));
  const torch::Tensor sims = std::get<0>(u.narrow(1, 0, k).t().matmul(u0).abs().max(/*dim=*/1));
  const torch::Tensor cpu = sims.to(torch::kCPU, torch::kFloat64).contiguous();
  return std::vector<double>(cpu.data_ptr<double>(), cpu.data_ptr<double>() + k);
}

}  // namespace

std::vector<double> IntruderSimilarities(const torch::Tensor& w0,
                                         const torch::Tensor& w_ft,
                                         int top_k) {
  torch::NoGradGuard no_grad;
  return TopSimilarities(LeftSingular(w_ft), LeftSingular(w0), top_k);
}

std::vector<IntruderMatrix> LoraIntruders(const LlamaModel& model, int top_k,
                                          double epsilon) {
  std::vector<IntruderMatrix> out;
  const std::vector<DecoderLayer>& layers = model.layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    for (const char* name : kProjectionNames) {
      const Linear& linear =
          *layers[i].Projection(name);
      if (!linear.lora_a.defined()) continue;
      const std::vector<double> sims =
          IntruderSimilarities(linear.weight, linear.MergedWeight(), top_k);
      IntruderMatrix m{.name = absl::StrCat("model.layers.", i, ".",
                                            std::string(ProjectionGroup(name)),
                                            ".", name, ".weight")};
      for (double s : sims) {
        m.intruders += s < epsilon ? 1 : 0;
        m.min_similarity = std::min(m.min_similarity, s);
      }
      out.push_back(std::move(m));
    }
  }
  return out;
}

MitigatedFactors MitigateIntruderFactors(const torch::Tensor& w0,
                                         const torch::Tensor& b,
                                         const torch::Tensor& a, double scale,
                                         int top_k, double epsilon,
                                         double lambda, int rank) {
  torch::NoGradGuard no_grad;
  const torch::Tensor w = w0.to(torch::kFloat32);
  const torch::Tensor b32 = b.to(torch::kFloat32), a32 = a.to(torch::kFloat32);
  const torch::Tensor merged = w + scale * b32.matmul(a32);
  auto [u, sv, vh] = torch::linalg_svd(merged, /*full_matrices=*/false);
  const std::vector<double> sims = TopSimilarities(u, LeftSingular(w), top_k);
  MitigatedFactors out{.b = b32.clone(), .a = a32.clone()};
  std::vector<int64_t> intruders;
  for (int64_t i = 0; i < static_cast<int64_t>(sims.size()); ++i) {
    const double sim = sims[i];
    out.min_similarity = std::min(out.min_similarity, sim);
    if (sim < epsilon) intruders.push_back(i);
  }
  out.intruders = static_cast<int>(intruders.size());
  if (intruders.empty()) return out;
  const torch::Tensor idx = torch::tensor(intruders, torch::kInt64).to(u.device());
  // U_I S_I V_I^T: PEFT's B_intruder A_intruder with sqrt(S) on each side.
  const torch::Tensor part = u.index_select(1, idx)
                                 .mul(sv.index_select(0, idx).unsqueeze(0))
                                 .matmul(vh.index_select(0, idx));
  const torch::Tensor delta = (merged + (lambda - 1) * part - w) / scale;
  auto [ud, sd, vhd] = torch::linalg_svd(delta, /*full_matrices=*/false);
  const int64_t r = std::min<int64_t>(rank, sd.size(0));
  const torch::Tensor root = sd.narrow(0, 0, r).sqrt();
  torch::Tensor new_b = ud.narrow(1, 0, r).mul(root.unsqueeze(0));
  torch::Tensor new_a = root.unsqueeze(1).mul(vhd.narrow(0, 0, r));
  if (r < rank) {  // a matrix smaller than the rank: zero factors past it
    new_b = torch::cat({new_b, torch::zeros({new_b.size(0), rank - r}, new_b.options())}, 1);
    new_a = torch::cat({new_a, torch::zeros({rank - r, new_a.size(1)}, new_a.options())}, 0);
  }
  out.b = new_b.contiguous();
  out.a = new_a.contiguous();
  return out;
}

std::vector<IntruderMatrix> MitigateIntruders(LlamaModel& model, int top_k,
                                              double epsilon, double lambda,
                                              double scale, int rank) {
  std::vector<IntruderMatrix> out;
  std::vector<DecoderLayer>& layers = model.layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    for (const char* name : kProjectionNames) {
      Linear& linear = *layers[i].Projection(name);
      if (!linear.lora_a.defined()) continue;
      MitigatedFactors m = MitigateIntruderFactors(
          linear.weight, linear.lora_b, linear.lora_a, scale, top_k, epsilon, lambda, rank);
      if (m.intruders > 0) {
        torch::NoGradGuard no_grad;
        linear.lora_b.copy_(m.b);
        linear.lora_a.copy_(m.a);
      }
      out.push_back({.name = absl::StrCat("model.layers.", i, ".",
                                          std::string(ProjectionGroup(name)), ".", name,
                                          ".weight"),
                     .intruders = m.intruders,
                     .min_similarity = m.min_similarity});
    }
  }
  return out;
}

}  // namespace lathe::engine
