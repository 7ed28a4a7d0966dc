#include "worker/engine/inference/generate.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"

namespace lathe::engine {
namespace {

// Picks a token from `logits` [V] (float32, CPU) as `options` say.
int32_t NextToken(const torch::Tensor& logits, const GenerateOptions& options,
                  std::mt19937_64& rng) {
  if (options.temperature == 0) {
    return static_cast<int32_t>(logits.argmax().item<int64_t>());
  }
  const torch::Tensor probs =
      torch::softmax(logits.to(torch::kFloat64) / options.temperature, -1)
          .contiguous();
  const double* p = probs.data_ptr<double>();
  std::vector<int32_t> order(probs.size(0));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  // The nucleus: the most likely tokens until their mass reaches top_p.
  double mass = 0;
  size_t keep = 0;
  while (keep < order.size() && (keep == 0 || mass < options.top_p)) {
    mass += p[order[keep++]];
  }
  double draw = std::uniform_real_distribution<double>(0, mass)(rng);
  for (size_t i = 0; i < keep; ++i) {
    draw -= p[order[i]];
    if (draw <= 0) return order[i];
  }
  return order[keep - 1];
}

// The last position's logits of `model` on `ids`, float32 on the CPU.
torch::Tensor LastLogits(const LlamaModel& model,
                         const std::vector<int64_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  const torch::Tensor input =
      torch::tensor(ids, torch::kInt64).view({1, T}).to(model.device());
  return model.Forward(input, torch::ones_like(input), false)[0][T - 1].to(
      torch::kCPU, torch::kFloat32);
}

}  // namespace

torch::Tensor NextLogits(const LlamaModel& model,
                         const std::vector<int64_t>& ids,
                         const LogitFusion* fusion) {
  torch::NoGradGuard no_grad;
  torch::Tensor logits = LastLogits(model, ids);
  if (fusion == nullptr) return logits;
  const int64_t V = logits.size(0);
  const torch::Tensor expert = LastLogits(*fusion->expert, ids).narrow(0, 0, V);
  const torch::Tensor anti =
      LastLogits(*fusion->anti_expert, ids).narrow(0, 0, V);
  return logits + fusion->alpha * (expert - anti);
}

absl::StatusOr<std::vector<int32_t>> Generate(
    const LlamaModel& model, const std::vector<int32_t>& prompt,
    const GenerateOptions& options, const LogitFusion* fusion) {
  if (prompt.empty()) {
    return absl::InvalidArgumentError("generation needs a non-empty prompt");
  }
  if (options.max_new_tokens < 0 || options.temperature < 0 ||
      !(options.top_p > 0 && options.top_p <= 1)) {
    return absl::InvalidArgumentError(
        "generation needs max_new_tokens >= 0, temperature >= 0 and top_p in "
        "(0, 1]");
  }
  if (fusion != nullptr) {
    if (fusion->expert == nullptr || fusion->anti_expert == nullptr) {
      return absl::InvalidArgumentError(
          "logit fusion needs an expert and an anti-expert");
    }
    for (const LlamaModel* m : {fusion->expert, fusion->anti_expert}) {
      if (m->config().vocab_size < model.config().vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "logit fusion: an expert's vocabulary (", m->config().vocab_size,
            ") is smaller than the model's (", model.config().vocab_size,
            "): the models must share a tokenizer"));
      }
    }
  }
  try {
    torch::NoGradGuard no_grad;
    std::mt19937_64 rng(options.seed);
    std::vector<int64_t> ids(prompt.begin(), prompt.end());
    std::vector<int32_t> out;
    for (int step = 0; step < options.max_new_tokens; ++step) {
      const int32_t next =
          NextToken(NextLogits(model, ids, fusion), options, rng);
      out.push_back(next);
      ids.push_back(next);
      if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) !=
          options.stop_ids.end()) {
        break;
      }
    }
    return out;
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("generation failed: ", e.what_without_backtrace()));
  }
}

}  // namespace lathe::engine
