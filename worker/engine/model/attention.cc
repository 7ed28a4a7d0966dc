#include "worker/engine/model/attention.h"

#include <torch/version.h>

#include <cmath>
#include <limits>

namespace lathe::engine {
namespace {

// The explicit path, written out (the reference for the fused one).
torch::Tensor ExplicitCausal(const torch::Tensor& q, const torch::Tensor& k,
                             const torch::Tensor& v) {
  const int64_t T = q.size(2);
  // The scores' mask and softmax in float32, whatever q's dtype.
  torch::Tensor scores = torch::matmul(q, k.transpose(2, 3))
                             .to(torch::kFloat32) *
                         std::pow(static_cast<double>(q.size(3)), -0.5);
  torch::Tensor future =
      torch::ones({T, T}, torch::TensorOptions(torch::kBool).device(q.device()))
          .triu(1);
  // -inf, not float's lowest (which overflows bfloat16); every row keeps its
  // diagonal, so none is all -inf.
  scores = scores.masked_fill(future, -std::numeric_limits<double>::infinity());
  return torch::matmul(
      torch::softmax(scores, -1, torch::kFloat32).to(v.scalar_type()), v);
}

// The one place that names at::scaled_dot_product_attention, which
// LibTorch 1.x lacks.
torch::Tensor FusedCausal(const torch::Tensor& q, const torch::Tensor& k,
                          const torch::Tensor& v) {
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{},
                                          /*dropout_p=*/0.0,
                                          /*is_causal=*/true);
#else
  TORCH_CHECK(false, "fused attention needs LibTorch 2.x");
  return {};
#endif
}

torch::Tensor Causal(const torch::Tensor& q, const torch::Tensor& k,
                     const torch::Tensor& v, AttentionKernel kernel) {
  return kernel == AttentionKernel::kFused ? FusedCausal(q, k, v)
                                           : ExplicitCausal(q, k, v);
}

}  // namespace

bool FusedAttentionAvailable() { return TORCH_VERSION_MAJOR >= 2; }

AttentionKernel DefaultAttentionKernel() {
  return FusedAttentionAvailable() ? AttentionKernel::kFused
                                   : AttentionKernel::kExplicit;
}

torch::Tensor SegmentedCausalAttention(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const std::vector<std::vector<int64_t>>& segments, AttentionKernel kernel) {
  const int64_t B = q.size(0), T = q.size(2);
  // Rows made of one segment each, all of length T: one batched call.
  bool whole_rows = true;
  for (const std::vector<int64_t>& row : segments) {
    whole_rows = whole_rows && row.size() == 1;
  }
  if (whole_rows) return Causal(q, k, v, kernel);
  std::vector<torch::Tensor> rows;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<torch::Tensor> parts;
    int64_t start = 0;
    for (int64_t length : segments[b]) {
      auto slice = [&](const torch::Tensor& t) {
        return t.slice(0, b, b + 1).slice(2, start, start + length);
      };
      parts.push_back(Causal(slice(q), slice(k), slice(v), kernel));
      start += length;
    }
    TORCH_CHECK(start == T, "segments of row ", b, " cover ", start,
                " tokens of ", T);
    rows.push_back(parts.size() == 1 ? parts[0] : torch::cat(parts, 2));
  }
  return B == 1 ? rows[0] : torch::cat(rows, 0);
}

}  // namespace lathe::engine
