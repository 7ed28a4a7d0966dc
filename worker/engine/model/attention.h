// Causal self-attention over the segments of a row: the core of a decoder
// layer's attention, after the projections and rotary embeddings.
//
// A row of a batch holds one or more segments (packed examples, or an
// example and its right padding); a token attends causally to the tokens of
// its own segment only, so no token sees another example. Each segment is
// computed on its own slice (the cu_seqlens idea of flash-attention's
// varlen kernels): the cost is the sum of the segments' squared lengths,
// never the row's.
#ifndef LATHE_WORKER_ENGINE_MODEL_ATTENTION_H_
#define LATHE_WORKER_ENGINE_MODEL_ATTENTION_H_

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace lathe::engine {

enum class AttentionKernel {
  kExplicit,  // scores = q k^T / sqrt(D), causal mask, softmax, @ v
  kFused,     // at::scaled_dot_product_attention (LibTorch 2.x only)
};

// True when this LibTorch has at::scaled_dot_product_attention (2.x).
bool FusedAttentionAvailable();

// kFused where available, else kExplicit.
AttentionKernel DefaultAttentionKernel();

// q, k, v: [B, H, T, D] (k and v already repeated for grouped-query
// attention). segments[b]: the lengths of row b's segments, in order,
// summing to T. Returns [B, H, T, D]. REQUIRES: segments.size() == B, each
// length positive; kFused only when FusedAttentionAvailable().
torch::Tensor SegmentedCausalAttention(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const std::vector<std::vector<int64_t>>& segments, AttentionKernel kernel);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_MODEL_ATTENTION_H_
