#include "worker/engine/loss/chunked_cross_entropy.h"

#include <algorithm>

namespace lathe::engine {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Chunked {
  torch::Tensor loss_sum;  // scalar, sum over rows of -log p(label)
  int64_t correct = 0;
  int64_t peak_logits_bytes = 0;
  torch::Tensor grad_hidden;  // d loss_sum / d hidden, when asked for
  torch::Tensor grad_head;    // d loss_sum / d head, when asked for
};

// Runs without recording gradients; computes the gradients of loss_sum
// chunk by chunk where asked.
Chunked Compute(const torch::Tensor& hidden, const torch::Tensor& head,
                const torch::Tensor& labels, int64_t chunk_tokens,
                bool want_hidden, bool want_head) {
  torch::NoGradGuard no_grad;
  const int64_t N = hidden.size(0);
  Chunked out;
  out.loss_sum = torch::zeros({}, hidden.options().dtype(torch::kFloat32));
  if (want_hidden) out.grad_hidden = torch::empty_like(hidden);
  // Summed over chunks in float32 whatever the compute dtype.
  if (want_head) {
    out.grad_head = torch::zeros(head.sizes(),
                                 head.options().dtype(torch::kFloat32));
  }
  for (int64_t start = 0; start < N; start += chunk_tokens) {
    const int64_t end = std::min(N, start + chunk_tokens);
    const torch::Tensor h = hidden.slice(0, start, end);
    const torch::Tensor y = labels.slice(0, start, end);
    torch::Tensor logits = torch::matmul(h, head.t()).to(torch::kFloat32);
    const torch::Tensor lse = torch::logsumexp(logits, 1, /*keepdim=*/true);
    out.loss_sum +=
        (lse.squeeze(1) - logits.gather(1, y.unsqueeze(1)).squeeze(1)).sum();
    out.correct += logits.argmax(1).eq(y).sum().item<int64_t>();
    int64_t bytes =
        logits.numel() * static_cast<int64_t>(logits.element_size());
    if (want_hidden || want_head) {
      // d(-log softmax(z)[y]) / dz = softmax(z) - onehot(y), in place.
      torch::Tensor grad = logits.sub_(lse).exp_();
      grad.scatter_add_(1, y.unsqueeze(1),
                        torch::full({end - start, 1}, -1.0, grad.options()));
      grad = grad.to(hidden.scalar_type());
      if (want_hidden)
        out.grad_hidden.slice(0, start, end).copy_(grad.mm(head));
      if (want_head) out.grad_head.add_(grad.t().mm(h).to(torch::kFloat32));
      if (grad.data_ptr() != logits.data_ptr()) bytes *= 2;
    }
    out.peak_logits_bytes = std::max(out.peak_logits_bytes, bytes);
  }
  return out;
}

// loss = loss_sum / N; backward scales the gradients computed in forward.
struct ChunkedCrossEntropyFunction
    : torch::autograd::Function<ChunkedCrossEntropyFunction> {
  static variable_list forward(AutogradContext* ctx,
                               const torch::Tensor& hidden,
                               const torch::Tensor& head,
                               const torch::Tensor& labels,
                               int64_t chunk_tokens, bool want_hidden,
                               bool want_head) {
    Chunked c =
        Compute(hidden, head, labels, chunk_tokens, want_hidden, want_head);
    const double n = static_cast<double>(hidden.size(0));
    ctx->save_for_backward(
        {want_hidden ? c.grad_hidden.div_(n) : torch::Tensor(),
         want_head ? c.grad_head.div_(n) : torch::Tensor()});
    torch::Tensor stats =
        torch::tensor({c.correct, c.peak_logits_bytes}, torch::kInt64);
    ctx->mark_non_differentiable({stats});
    return {c.loss_sum / n, stats};
  }

  static variable_list backward(AutogradContext* ctx,
                                variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& g = grad_outputs[0];
    auto scaled = [&](const torch::Tensor& grad) {
      return grad.defined() ? grad * g.to(grad.scalar_type()) : torch::Tensor();
    };
    return {scaled(saved[0]), scaled(saved[1]), torch::Tensor(),
            torch::Tensor(),  torch::Tensor(),  torch::Tensor()};
  }
};

// Per-row log-probabilities; backward recomputes each chunk's softmax.
struct ChunkedTokenLogpsFunction
    : torch::autograd::Function<ChunkedTokenLogpsFunction> {
  static variable_list forward(AutogradContext* ctx,
                               const torch::Tensor& hidden,
                               const torch::Tensor& head,
                               const torch::Tensor& labels,
                               int64_t chunk_tokens) {
    ctx->save_for_backward({hidden, head, labels});
    ctx->saved_data["chunk_tokens"] = chunk_tokens;
    int64_t peak = 0;
    TokenLogps out = Logps(hidden, head, labels, chunk_tokens, &peak);
    torch::Tensor stats = torch::tensor({peak}, torch::kInt64);
    ctx->mark_non_differentiable({out.correct, stats});
    return {out.logps, out.correct, stats};
  }

  static variable_list backward(AutogradContext* ctx,
                                variable_list grad_outputs) {
    torch::NoGradGuard no_grad;
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &hidden = saved[0], &head = saved[1],
                        &labels = saved[2];
    const int64_t chunk_tokens = ctx->saved_data["chunk_tokens"].toInt();
    const torch::Tensor g = grad_outputs[0].to(torch::kFloat32);
    const bool want_hidden = ctx->needs_input_grad(0);
    const bool want_head = ctx->needs_input_grad(1);
    torch::Tensor grad_hidden, grad_head;
    if (want_hidden) grad_hidden = torch::empty_like(hidden);
    if (want_head) {
      grad_head = torch::zeros(head.sizes(),
                               head.options().dtype(torch::kFloat32));
    }
    const int64_t N = hidden.size(0);
    for (int64_t start = 0; start < N; start += chunk_tokens) {
      const int64_t end = std::min(N, start + chunk_tokens);
      const torch::Tensor h = hidden.slice(0, start, end);
      const torch::Tensor y = labels.slice(0, start, end);
      // d log softmax(z)[y] / dz = onehot(y) - softmax(z), times g per row.
      torch::Tensor grad =
          torch::matmul(h, head.t()).to(torch::kFloat32).softmax(1).neg_();
      grad.scatter_add_(1, y.unsqueeze(1),
                        torch::ones({end - start, 1}, grad.options()));
      grad.mul_(g.slice(0, start, end).unsqueeze(1));
      grad = grad.to(hidden.scalar_type());
      if (want_hidden) grad_hidden.slice(0, start, end).copy_(grad.mm(head));
      if (want_head) grad_head.add_(grad.t().mm(h).to(torch::kFloat32));
    }
    return {grad_hidden,
            want_head ? grad_head.to(head.scalar_type()) : torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }

  static TokenLogps Logps(const torch::Tensor& hidden,
                          const torch::Tensor& head,
                          const torch::Tensor& labels, int64_t chunk_tokens,
                          int64_t* peak) {
    torch::NoGradGuard no_grad;
    const int64_t N = hidden.size(0);
    TokenLogps out{
        .logps = torch::empty({N}, hidden.options().dtype(torch::kFloat32)),
        .correct = torch::empty({N}, hidden.options().dtype(torch::kBool))};
    for (int64_t start = 0; start < N; start += chunk_tokens) {
      const int64_t end = std::min(N, start + chunk_tokens);
      const torch::Tensor logits =
          torch::matmul(hidden.slice(0, start, end), head.t())
              .to(torch::kFloat32);
      const torch::Tensor y = labels.slice(0, start, end).unsqueeze(1);
      out.logps.slice(0, start, end)
          .copy_((logits.gather(1, y) -
                  torch::logsumexp(logits, 1, /*keepdim=*/true))
                     .squeeze(1));
      out.correct.slice(0, start, end).copy_(logits.argmax(1).eq(y.squeeze(1)));
      *peak = std::max(*peak, logits.numel() *
                                  static_cast<int64_t>(logits.element_size()));
    }
    return out;
  }
};

}  // namespace

TokenLogps ChunkedTokenLogps(const torch::Tensor& hidden,
                             const torch::Tensor& head_in,
                             const torch::Tensor& labels, int64_t chunk_tokens,
                             int64_t* peak_logits_bytes) {
  const torch::Tensor head = head_in.scalar_type() == hidden.scalar_type()
                                 ? head_in
                                 : head_in.to(hidden.scalar_type());
  int64_t peak = 0;
  TokenLogps out;
  if (torch::GradMode::is_enabled() &&
      (hidden.requires_grad() || head.requires_grad())) {
    variable_list v =
        ChunkedTokenLogpsFunction::apply(hidden, head, labels, chunk_tokens);
    out = {.logps = v[0], .correct = v[1]};
    peak = v[2][0].item<int64_t>();
  } else {
    out = ChunkedTokenLogpsFunction::Logps(hidden, head, labels, chunk_tokens,
                                           &peak);
  }
  if (peak_logits_bytes != nullptr) {
    *peak_logits_bytes = std::max(*peak_logits_bytes, peak);
  }
  return out;
}

CausalTargets SelectCausalTargets(const torch::Tensor& hidden,
                                  const Batch& batch) {
  const int64_t B = batch.input_ids.size(0), T = batch.input_ids.size(1);
  const int64_t C = hidden.size(-1);
  // The example of every position: in one row (packed, or a single
  // example) each segment is an example; in several rows, each row is one
  // (followed by its padding, which holds no target).
  std::vector<int64_t> example_of(B * T);
  if (B == 1) {
    int64_t t = 0, example = 0;
    for (const int64_t length : batch.layout.segments[0]) {
      for (int64_t i = 0; i < length; ++i) example_of[t++] = example;
      ++example;
    }
  } else {
    for (int64_t i = 0; i < B * T; ++i) example_of[i] = i / T;
  }
  const torch::Tensor mask = batch.loss_mask.slice(1, 1).reshape({-1});
  const torch::Tensor rows = mask.nonzero().squeeze(1);
  // Position t + 1's example for the row predicting it from t.
  torch::Tensor owner =
      torch::tensor(example_of, torch::kInt64).view({B, T}).slice(1, 1);
  return {.rows = rows,
          .hidden =
              hidden.slice(1, 0, -1).reshape({-1, C}).index_select(0, rows),
          .labels =
              batch.input_ids.slice(1, 1).reshape({-1}).index_select(0, rows),
          .example = owner.reshape({-1}).to(rows.device()).index_select(0,
                                                                        rows)};
}

LossStats ChunkedCrossEntropy(const torch::Tensor& hidden,
                              const torch::Tensor& head_in,
                              const torch::Tensor& labels,
                              int64_t chunk_tokens) {
  const bool grad = torch::GradMode::is_enabled();
  const bool want_hidden = grad && hidden.requires_grad();
  const bool want_head = grad && head_in.requires_grad();
  // The head in the compute dtype (float32 masters are cast, so that their
  // gradient arrives in float32); logits and the loss are float32.
  const torch::Tensor head = head_in.scalar_type() == hidden.scalar_type()
                                 ? head_in
                                 : head_in.to(hidden.scalar_type());
  LossStats stats;
  stats.targets = hidden.size(0);
  if (!want_hidden && !want_head) {
    Chunked c = Compute(hidden, head, labels, chunk_tokens, false, false);
    stats.loss = c.loss_sum / static_cast<double>(stats.targets);
    stats.correct = c.correct;
    stats.peak_logits_bytes = c.peak_logits_bytes;
    return stats;
  }
  variable_list out = ChunkedCrossEntropyFunction::apply(
      hidden, head, labels, chunk_tokens, want_hidden, want_head);
  stats.loss = out[0];
  stats.correct = out[1][0].item<int64_t>();
  stats.peak_logits_bytes = out[1][1].item<int64_t>();
  return stats;
}

LossStats ChunkedCausalLmLoss(const torch::Tensor& hidden,
                              const torch::Tensor& head, const Batch& batch,
                              int64_t chunk_tokens) {
  const int64_t C = hidden.size(-1);
  const torch::Tensor mask = batch.loss_mask.slice(1, 1).reshape({-1});
  const torch::Tensor rows = mask.nonzero().squeeze(1);
  const torch::Tensor predicting =
      hidden.slice(1, 0, -1).reshape({-1, C}).index_select(0, rows);
  const torch::Tensor labels =
      Labels(batch).slice(1, 1).reshape({-1}).index_select(0, rows);
  return ChunkedCrossEntropy(predicting, head, labels, chunk_tokens);
}

}  // namespace lathe::engine
