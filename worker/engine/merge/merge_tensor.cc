#include "worker/engine/merge/merge_tensor.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>

namespace lathe::engine {
namespace {

// sum_i w_i t_i.
torch::Tensor WeightedSum(const std::vector<torch::Tensor>& taus,
                          const std::vector<double>& weights) {
  torch::Tensor sum = torch::zeros_like(taus[0]);
  for (size_t i = 0; i < taus.size(); ++i) sum += weights[i] * taus[i];
  return sum;
}

// splitmix64's finalizer: a well-mixed 64-bit hash step.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The number of entries a fraction of n keeps: floor, as Python's int()
// of the references computes it.
int64_t Count(double fraction, int64_t n) {
  return static_cast<int64_t>(std::floor(fraction * static_cast<double>(n)));
}

}  // namespace

torch::Tensor TrimToDensity(const torch::Tensor& tau, double density) {
  const int64_t n = tau.numel();
  const int64_t k = Count(density, n);
  if (k >= n) return tau;
  const torch::Tensor flat = tau.reshape({-1});
  torch::Tensor keep = torch::zeros({n}, flat.options().dtype(torch::kBool));
  if (k > 0) {
    keep.index_fill_(0, std::get<1>(flat.abs().topk(k)), true);
  }
  return torch::where(keep, flat, torch::zeros_like(flat)).view(tau.sizes());
}

uint64_t DareSeed(uint64_t seed, size_t input, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a of the name
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ULL;
  return Mix(Mix(Mix(seed) ^ input) ^ h);
}

torch::Tensor DareDrop(const torch::Tensor& tau, double density,
                       uint64_t seed) {
  if (density >= 1) return tau;
  at::Generator generator = at::detail::createCPUGenerator(seed);
  const torch::Tensor keep =
      torch::empty(tau.sizes(), tau.options()).bernoulli_(density, generator) >
      0.5;
  return torch::where(keep, tau / density, torch::zeros_like(tau));
}

torch::Tensor BreadcrumbsMask(const torch::Tensor& tau, double beta,
                              double gamma) {
  if (tau.dim() == 0) return tau;
  const int64_t n = tau.size(-1);
  const int64_t top = Count(gamma, n);
  const int64_t end = std::min(n, top + Count(beta, n));
  const torch::Tensor rows = tau.reshape({-1, n});
  torch::Tensor keep =
      torch::zeros(rows.sizes(), rows.options().dtype(torch::kBool));
  if (end > top) {
    // Row entries by |tau|, largest first; ranks [top, end) survive.
    const torch::Tensor order =
        std::get<1>(rows.abs().sort(/*dim=*/1, /*descending=*/true));
    keep.scatter_(1, order.slice(1, top, end), true);
  }
  return torch::where(keep, rows, torch::zeros_like(rows)).view(tau.sizes());
}

torch::Tensor TiesMerge(const std::vector<torch::Tensor>& sparse,
                        const std::vector<double>& weights,
                        MajoritySign majority_sign) {
  std::vector<torch::Tensor> deltas;
  for (size_t i = 0; i < sparse.size(); ++i) {
    deltas.push_back(weights[i] * sparse[i]);
  }
  const torch::Tensor stacked = torch::stack(deltas);  // [N, ...]
  const torch::Tensor signs = stacked.sign();
  const torch::Tensor votes =
      majority_sign == MajoritySign::kTotal ? stacked.sum(0) : signs.sum(0);
  const torch::Tensor elected = torch::where(
      votes >= 0, torch::ones_like(votes), -torch::ones_like(votes));
  const torch::Tensor agree = (signs == elected).to(stacked.scalar_type());
  const torch::Tensor w = torch::tensor(weights, stacked.options()).view([&] {
    std::vector<int64_t> shape(stacked.dim(), 1);
    shape[0] = static_cast<int64_t>(weights.size());
    return shape;
  }());
  torch::Tensor divisor = (w * agree).sum(0);
  // No agreeing entry: the sum is 0 too; divide by 1 (as mergekit).
  divisor =
      torch::where(divisor.abs() < 1e-8, torch::ones_like(divisor), divisor);
  return (stacked * agree).sum(0) / divisor;
}

LowRankFactors FactorizeLowRank(const torch::Tensor& delta, int rank) {
  const int64_t out = delta.size(0), in = delta.size(1);
  const int64_t k = std::min<int64_t>(rank, std::min(out, in));
  auto [u, s, vh] = torch::linalg_svd(delta.to(torch::kFloat64),
                                      /*full_matrices=*/false);
  LowRankFactors f;
  f.a = torch::zeros({rank, in}, torch::kFloat64);
  f.b = torch::zeros({out, rank}, torch::kFloat64);
  f.a.slice(0, 0, k).copy_(vh.slice(0, 0, k));
  f.b.slice(1, 0, k).copy_(u.slice(1, 0, k) * s.slice(0, 0, k));
  f.a = f.a.to(torch::kFloat32);
  f.b = f.b.to(torch::kFloat32);
  return f;
}

double LinesMultiplier(const TensorSite& site, double alpha, double beta) {
  if (site.layer < 0) return alpha;
  if (site.num_layers <= 1) return alpha + beta;
  return alpha + beta * site.layer / (site.num_layers - 1);
}

torch::Tensor MergeTaskVectors(const MergeParams& params,
                               const std::vector<double>& weights,
                               const std::vector<torch::Tensor>& taus,
                               const TensorSite& site) {
  auto each = [&](auto&& f) {
    std::vector<torch::Tensor> out;
    for (size_t i = 0; i < taus.size(); ++i) out.push_back(f(i, taus[i]));
    return out;
  };
  auto dare = [&](size_t i, const torch::Tensor& tau) {
    return DareDrop(tau, params.density, DareSeed(params.seed, i, site.name));
  };
  switch (params.method) {
    case MergeMethod::kLinear:
    case MergeMethod::kGreedySoup: {
      double total = 0;
      for (double w : weights) total += w;
      return WeightedSum(taus, weights) / total;
    }
    case MergeMethod::kTaskArithmetic:
      return params.lambda * WeightedSum(taus, weights);
    case MergeMethod::kTies:
      return params.lambda *
             TiesMerge(each([&](size_t, const torch::Tensor& tau) {
                         return TrimToDensity(tau, params.density);
                       }),
                       weights, params.majority_sign);
    case MergeMethod::kDareLinear:
      return params.lambda * WeightedSum(each(dare), weights);
    case MergeMethod::kDareTies:
      return params.lambda *
             TiesMerge(each(dare), weights, params.majority_sign);
    case MergeMethod::kBreadcrumbs:
      return params.lambda *
             WeightedSum(each([&](size_t, const torch::Tensor& tau) {
                           return BreadcrumbsMask(tau, params.beta,
                                                  params.gamma);
                         }),
                         weights);
    case MergeMethod::kLines:
      return LinesMultiplier(site, params.lines_alpha, params.lines_beta) *
             WeightedSum(taus, weights);
  }
  return WeightedSum(taus, weights);
}

}  // namespace lathe::engine
