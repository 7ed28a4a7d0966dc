// One tensor of a merge: the task vectors of the inputs combined by a
// method of METHODS.md §5, in float64. Every function is pure (DARE's draws
// come from its seed alone) and works on tensors of any shape.
//
// Conventions Lathe decided where the references differ (docs/merging.md):
//   - TIES (§5.3) follows mergekit: trim each tau_i per tensor to exactly
//     floor(density numel) entries; elect the sign on the weighted deltas
//     w_i tau^_i (a zero sum or count elects +); divide the agreeing sum
//     sum_i w_i tau^_i [agree] by sum_i w_i [agree] (PEFT divides by the
//     count instead; both agree when every weight is 1); 0 where none
//     agrees. DARE-TIES is the same election and mean over DARE's vectors.
//   - DARE (§5.4) follows PEFT and MergeLM: keep each entry with
//     probability density = 1 - p and divide the survivors by density
//     (not mergekit's L1-norm rescale).
//   - Breadcrumbs (§5.5) follows the reference code, per row (the last
//     dimension; a 1-D tensor is one row, a scalar is kept): remove the
//     floor(gamma n) largest |tau|, then keep the floor(beta n) largest of
//     the rest. floor(gamma n) = 0 removes nothing on top (not mergekit's
//     empty-slice bug, which zeroes the whole vector).
//   - LiNeS (§5.6) scales the weighted sum of the task vectors; with one
//     decoder layer (L = 1) that layer gets alpha + beta.
#ifndef LATHE_WORKER_ENGINE_MERGE_MERGE_TENSOR_H_
#define LATHE_WORKER_ENGINE_MERGE_MERGE_TENSOR_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "worker/engine/merge/merge_spec.h"

namespace lathe::engine {

// Where a tensor sits in the model.
struct TensorSite {
  std::string name;    // "model.layers.3.mlp.up_proj.weight"
  int layer = -1;      // 3; -1 outside the decoder layers
  int num_layers = 1;  // L, 16
};

// The merged task vector of one tensor: taus[i] (float64, one shape) is
// input i's, weights[i] its weight; the merged tensor is theta_0 + this.
//   linear, greedy_soup  sum_i w_i tau_i / sum_i w_i
//   task_arithmetic      lambda sum_i w_i tau_i
//   ties                 lambda TiesMerge(Trim(tau_i))
//   dare_linear          lambda sum_i w_i Dare(tau_i)
//   dare_ties            lambda TiesMerge(Dare(tau_i))
//   breadcrumbs          lambda sum_i w_i Breadcrumbs(tau_i)
//   lines                LinesMultiplier(site) sum_i w_i tau_i
// DARE's seed for input i is DareSeed(params.seed, i, site.name).
// REQUIRES: taus non-empty, one weight per tau, Validate-d params.
torch::Tensor MergeTaskVectors(const MergeParams& params,
                               const std::vector<double>& weights,
                               const std::vector<torch::Tensor>& taus,
                               const TensorSite& site);

// TIES' trim: tau with all but its floor(density numel) largest-|.|
// entries set to 0.
torch::Tensor TrimToDensity(const torch::Tensor& tau, double density);

// DARE: each entry kept with probability `density` (a Bernoulli draw from
// a generator seeded with `seed`) and divided by density, else 0.
// REQUIRES: density in (0, 1].
torch::Tensor DareDrop(const torch::Tensor& tau, double density, uint64_t seed);

// The seed of input `input`'s mask for tensor `name`: a hash of the three,
// so a mask does not depend on which other tensors or inputs are merged.
uint64_t DareSeed(uint64_t seed, size_t input, const std::string& name);

// Breadcrumbs' mask applied to tau (see the conventions above).
torch::Tensor BreadcrumbsMask(const torch::Tensor& tau, double beta,
                              double gamma);

// TIES' sign election and disjoint mean over sparse task vectors, with the
// weights (see the conventions above).
torch::Tensor TiesMerge(const std::vector<torch::Tensor>& sparse,
                        const std::vector<double>& weights,
                        MajoritySign majority_sign);

// A rank-`rank` factorisation B A of `delta` [out, in] by truncated SVD, as
// PEFT's svd combinations build it: B = U[:, :r] diag(S[:r]) [out, r],
// A = Vh[:r] [r, in], float32 (computed in float64). Ranks past
// min(out, in) are zero rows of A and columns of B, so that every
// projection of an adapter has one r; at r >= min(out, in), B A = delta.
struct LowRankFactors {
  torch::Tensor a;  // [r, in]
  torch::Tensor b;  // [out, r]
};
LowRankFactors FactorizeLowRank(const torch::Tensor& delta, int rank);

// LiNeS' multiplier: alpha + beta l / (L - 1) for decoder layer l, alpha
// outside the layers.
double LinesMultiplier(const TensorSite& site, double alpha, double beta);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_MERGE_MERGE_TENSOR_H_
