#include "worker/engine/inference/score.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "worker/engine/data/batch.h"

namespace lathe::engine {
namespace {

absl::Status CheckScorable(const LlamaModel& model, const Example& example,
                           size_t min_tokens) {
  if (example.ids.size() < min_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "an example to score needs at least ", min_tokens, " token",
        min_tokens == 1 ? "" : "s"));
  }
  for (int32_t id : example.ids) {
    if (id < 0 || id >= model.config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", id, " is outside the model's vocabulary of ",
          model.config().vocab_size));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Scores> ScoreExample(const LlamaModel& model,
                                    const Example& example) {
  const int64_t T = static_cast<int64_t>(example.ids.size());
  if (absl::Status st = CheckScorable(model, example, 2); !st.ok()) return st;
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

absl::StatusOr<std::vector<ExampleScore>> ScoreExamples(
    const LlamaModel& model, const std::vector<Example>& examples,
    int batch_size, int32_t pad_id, bool embed,
    const std::function<void(int64_t)>& progress) {
  if (batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch_size: must be at least 1, got ", batch_size));
  }
  for (const Example& e : examples) {
    // One token is an example without targets (loss NaN), still embedded.
    if (absl::Status st = CheckScorable(model, e, 1); !st.ok()) return st;
  }
  std::vector<size_t> order(examples.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return examples[a].ids.size() > examples[b].ids.size();
  });
  std::vector<ExampleScore> out(examples.size());
  try {
    torch::NoGradGuard no_grad;
    const torch::Tensor head = model.head().to(torch::kFloat32);
    for (size_t first = 0; first < order.size(); first += batch_size) {
      const std::vector<size_t> rows(
          order.begin() + first,
          order.begin() + std::min(order.size(), first + batch_size));
      const Batch batch =
          ToDevice(MakeBatch(examples, rows, pad_id), model.device());
      const torch::Tensor hidden =
          model.Hidden(batch.input_ids, batch.layout, {.training = false})
              .to(torch::kFloat32);  // [B, T, C]
      for (size_t r = 0; r < rows.size(); ++r) {
        const Example& e = examples[rows[r]];
        const int64_t T = static_cast<int64_t>(e.ids.size());
        const torch::Tensor h = hidden[r].slice(0, 0, T);  // [T, C]
        ExampleScore& score = out[rows[r]];
        if (embed) {
          const torch::Tensor mean = h.mean(0).to(torch::kCPU).contiguous();
          score.embedding.assign(mean.data_ptr<float>(),
                                 mean.data_ptr<float>() + mean.numel());
        }
        // Position t - 1 predicts token t, for the targets t only.
        std::vector<int64_t> targets;
        for (int64_t t = 1; t < T; ++t) {
          if (e.loss_mask[t] == 1) targets.push_back(t);
        }
        score.targets = static_cast<int64_t>(targets.size());
        if (targets.empty()) {
          score.loss = std::numeric_limits<double>::quiet_NaN();
          continue;
        }
        const torch::Tensor at =
            torch::tensor(targets, torch::kInt64).to(h.device());
        const torch::Tensor labels = batch.input_ids[r].index_select(0, at);
        const torch::Tensor logits =
            h.index_select(0, at - 1).matmul(head.t());  // [targets, V]
        score.loss = -torch::log_softmax(logits, -1)
                          .gather(1, labels.unsqueeze(1))
                          .to(torch::kFloat64)
                          .mean()
                          .item<double>();
      }
      if (progress) progress(static_cast<int64_t>(first + rows.size()));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("scoring failed: ", e.what_without_backtrace()));
  }
  return out;
}

}  // namespace lathe::engine
