#include "worker/engine/inference/score.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace lathe::engine {

absl::StatusOr<Scores> ScoreExample(const LlamaModel& model,
                                    const Example& example) {
  const int64_t T = static_cast<int64_t>(example.ids.size());
  if (T < 2) {
    return absl::InvalidArgumentError(
        "an example to score needs at least 2 tokens");
  }
  for (int32_t id : example.ids) {
    if (id < 0 || id >= model.config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", id, " is outside the model's vocabulary of ",
          model.config().vocab_size));
    }
  }
  try {
    torch::NoGradGuard no_grad;
    const torch::Tensor ids =
        torch::tensor(
            std::vector<int64_t>(example.ids.begin(), example.ids.end()),
            torch::kInt64)
            .view({1, T});
    const torch::Tensor input = ids.to(model.device());
    Scores out;
    out.logits = model.Forward(input, torch::ones_like(input), false)
                     .to(torch::kCPU, torch::kFloat32);  // [1, T, V]
    // Position t - 1 predicts token t.
    const torch::Tensor logprobs =
        torch::log_softmax(out.logits[0].slice(0, 0, T - 1), -1)
            .gather(1, ids[0].slice(0, 1, T).unsqueeze(1))
            .squeeze(1)
            .to(torch::kFloat64)
            .contiguous();
    out.logprobs.assign(logprobs.data_ptr<double>(),
                        logprobs.data_ptr<double>() + (T - 1));
    double masked = 0, all = 0;
    int64_t n = 0;
    for (int64_t t = 1; t < T; ++t) {
      all -= out.logprobs[t - 1];
      if (example.loss_mask[t] == 1) {
        masked -= out.logprobs[t - 1];
        ++n;
      }
    }
    out.loss = n > 0 ? masked / n : std::numeric_limits<double>::quiet_NaN();
    out.loss_all = all / (T - 1);
    return out;
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("scoring failed: ", e.what_without_backtrace()));
  }
}

}  // namespace lathe::engine
