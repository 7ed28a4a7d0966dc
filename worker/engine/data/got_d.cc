#include "worker/engine/data/got_d.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace lathe::engine {
namespace {

bool AllFinite(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(),
                     [](double x) { return std::isfinite(x); });
}

absl::Status CheckWeights(const std::vector<double>& w, const char* name) {
  for (size_t i = 0; i < w.size(); ++i) {
    if (!(w[i] > 0) || !std::isfinite(w[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "[", i, "] = ", w[i], ": weights must be > 0"));
    }
  }
  return absl::OkStatus();
}

// The rows of `v` as float64, L2-normalised when `normalize`.
absl::StatusOr<std::vector<std::vector<double>>> Prepared(
    const std::vector<std::vector<float>>& v, size_t dim, bool normalize,
    const char* name) {
  std::vector<std::vector<double>> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i].size() != dim) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "[", i, "] has ", v[i].size(),
                       " dimensions; the first candidate has ", dim));
    }
    std::vector<double> row(v[i].begin(), v[i].end());
    if (!AllFinite(row)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "[", i, "] has a non-finite component"));
    }
    if (normalize) {
      const double norm = std::sqrt(
          std::inner_product(row.begin(), row.end(), row.begin(), 0.0));
      if (norm == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, "[", i, "] is zero: it has no direction"));
      }
      for (double& x : row) x /= norm;
    }
    out.push_back(std::move(row));
  }
  return out;
}

}  // namespace

absl::StatusOr<SinkhornResult> LogSinkhorn(const std::vector<double>& cost,
                                           const std::vector<double>& a,
                                           const std::vector<double>& b,
                                           const SinkhornOptions& options) {
  const size_t n = a.size(), m = b.size();
  if (n == 0 || m == 0 || cost.size() != n * m) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cost has ", cost.size(), " entries for ", n, " x ", m, " weights"));
  }
  const double eps = options.epsilon;
  if (!(eps > 0) || !std::isfinite(eps)) {
    return absl::InvalidArgumentError(
        absl::StrCat("epsilon: must be > 0 and finite, got ", eps));
  }
  if (!AllFinite(cost)) {
    return absl::InvalidArgumentError("cost: every entry must be finite");
  }
  if (absl::Status st = CheckWeights(a, "a"); !st.ok()) return st;
  if (absl::Status st = CheckWeights(b, "b"); !st.ok()) return st;

  std::vector<double> log_a(n), log_b(m);
  for (size_t i = 0; i < n; ++i) log_a[i] = std::log(a[i]);
  for (size_t j = 0; j < m; ++j) log_b[j] = std::log(b[j]);
  SinkhornResult r;
  r.f.assign(n, 0);
  r.g.assign(m, 0);
  std::vector<double> col_max(m), col_sum(m);
  for (int it = 1; it <= options.max_iterations; ++it) {
    // f_i = eps log a_i - eps LSE_j((g_j - C_ij) / eps), row by row.
    double change = 0;
    for (size_t i = 0; i < n; ++i) {
      const double* c = &cost[i * m];
      double top = -std::numeric_limits<double>::infinity();
      for (size_t j = 0; j < m; ++j) top = std::max(top, (r.g[j] - c[j]) / eps);
      double sum = 0;
      for (size_t j = 0; j < m; ++j)
        sum += std::exp((r.g[j] - c[j]) / eps - top);
      const double f = eps * (log_a[i] - top - std::log(sum));
      change = std::max(change, std::abs(f - r.f[i]));
      r.f[i] = f;
    }
    // g_j = eps log b_j - eps LSE_i((f_i - C_ij) / eps): the column
    // maxima first, then the sums, both walking the rows in order.
    std::fill(col_max.begin(), col_max.end(),
              -std::numeric_limits<double>::infinity());
    std::fill(col_sum.begin(), col_sum.end(), 0);
    for (size_t i = 0; i < n; ++i) {
      const double* c = &cost[i * m];
      for (size_t j = 0; j < m; ++j) {
        col_max[j] = std::max(col_max[j], (r.f[i] - c[j]) / eps);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      const double* c = &cost[i * m];
      for (size_t j = 0; j < m; ++j) {
        col_sum[j] += std::exp((r.f[i] - c[j]) / eps - col_max[j]);
      }
    }
    for (size_t j = 0; j < m; ++j) {
      r.g[j] = eps * (log_b[j] - col_max[j] - std::log(col_sum[j]));
    }
    r.iterations = it;
    if (it > 1 && change <= options.tolerance * eps) {
      r.converged = true;
      break;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const double* c = &cost[i * m];
    double row = 0;
    for (size_t j = 0; j < m; ++j)
      row += std::exp((r.f[i] + r.g[j] - c[j]) / eps);
    r.marginal_error = std::max(r.marginal_error, std::abs(row - a[i]) / a[i]);
  }
  return r;
}

std::vector<double> CalibratedGradient(const std::vector<double>& f) {
  const double total = std::accumulate(f.begin(), f.end(), 0.0);
  const double others = static_cast<double>(f.size()) - 1;
  std::vector<double> g(f.size());
  for (size_t i = 0; i < f.size(); ++i) g[i] = f[i] - (total - f[i]) / others;
  return g;
}

double Median(std::vector<double> values) {
  const size_t mid = values.size() / 2;
  std::nth_element(values.begin(), values.begin() + mid, values.end());
  const double upper = values[mid];
  if (values.size() % 2 == 1) return upper;
  const double lower = *std::max_element(values.begin(), values.begin() + mid);
  return (lower + upper) / 2;
}

absl::StatusOr<GotDResult> GotDSelect(
    const std::vector<std::vector<float>>& candidates,
    const std::vector<std::vector<float>>& targets,
    const GotDOptions& options) {
  if (candidates.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GOT-D needs at least 2 candidates, got ", candidates.size()));
  }
  if (targets.empty()) {
    return absl::InvalidArgumentError("GOT-D needs at least 1 target");
  }
  if (options.budget < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget: must be at least 1, got ", options.budget));
  }
  const size_t dim = candidates[0].size();
  if (dim == 0) {
    return absl::InvalidArgumentError("the embeddings have no dimension");
  }
  auto cs = Prepared(candidates, dim, options.normalize, "candidates");
  if (!cs.ok()) return cs.status();
  auto ts = Prepared(targets, dim, options.normalize, "targets");
  if (!ts.ok()) return ts.status();
  const size_t n = cs->size(), m = ts->size();
  std::vector<double> cost(n * m);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < m; ++j) {
      double d = 0;
      for (size_t k = 0; k < dim; ++k) {
        const double x = (*cs)[i][k] - (*ts)[j][k];
        d += x * x;
      }
      cost[i * m + j] = d;
    }
  }
  GotDResult out;
  out.median_cost = Median(cost);
  if (options.epsilon != 0) {
    if (!(options.epsilon > 0) || !std::isfinite(options.epsilon)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "epsilon: must be > 0 and finite (or 0: a fraction of the median "
          "cost), got ",
          options.epsilon));
    }
    out.epsilon = options.epsilon;
  } else {
    if (!(options.epsilon_fraction > 0) ||
        !std::isfinite(options.epsilon_fraction)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "epsilon_fraction: must be > 0, got ", options.epsilon_fraction));
    }
    out.epsilon = options.epsilon_fraction * out.median_cost;
    if (!(out.epsilon > 0)) {
      return absl::InvalidArgumentError(
          "epsilon_fraction: the median cost is 0 (the candidates sit on the "
          "targets), so a fraction of it is no regularisation; give epsilon");
    }
  }
  const std::vector<double> a(n, 1.0 / n), b(m, 1.0 / m);
  auto duals = LogSinkhorn(cost, a, b,
                           {.epsilon = out.epsilon,
                            .max_iterations = options.max_iterations,
                            .tolerance = options.tolerance});
  if (!duals.ok()) return duals.status();
  out.duals = *std::move(duals);
  out.gradient = CalibratedGradient(out.duals.f);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    return out.gradient[x] < out.gradient[y];
  });
  order.resize(std::min<size_t>(n, static_cast<size_t>(options.budget)));
  out.selected = std::move(order);
  return out;
}

absl::StatusOr<GotDShardedResult> GotDSelectSharded(
    const std::vector<std::vector<float>>& candidates,
    const std::vector<std::vector<float>>& targets, const GotDOptions& options,
    int64_t shard_size, uint64_t seed) {
  const int64_t n = static_cast<int64_t>(candidates.size());
  const int64_t m = std::max<int64_t>(1, static_cast<int64_t>(targets.size()));
  if (shard_size <= 0) shard_size = kGotDMaxCostEntries / m;
  shard_size = std::max<int64_t>(shard_size, 4);  // every shard >= 2 candidates
  GotDShardedResult out;
  if (n <= shard_size) {
    ASSIGN_OR_RETURN(out.result, GotDSelect(candidates, targets, options));
    out.max_iterations = out.result.duals.iterations;
    out.max_marginal_error = out.result.duals.marginal_error;
    return out;
  }
  if (options.budget < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget: must be at least 1, got ", options.budget));
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  const int64_t shards = (n + shard_size - 1) / shard_size;
  // Near-equal sizes: with shard_size >= 4, each above shard_size / 2.
  std::vector<int64_t> sizes(shards, n / shards);
  for (int64_t s = 0; s < n % shards; ++s) ++sizes[s];
  // The budget in proportion to the sizes, by largest remainders.
  const int64_t budget = std::min(options.budget, n);
  std::vector<int64_t> share(shards);
  std::vector<std::pair<double, int64_t>> remainders;
  int64_t given = 0;
  for (int64_t s = 0; s < shards; ++s) {
    const double exact = static_cast<double>(budget) * sizes[s] / n;
    share[s] = static_cast<int64_t>(std::floor(exact));
    given += share[s];
    remainders.push_back({exact - share[s], s});
  }
  std::stable_sort(remainders.begin(), remainders.end(),
                   [](const auto& x, const auto& y) { return x.first > y.first; });
  for (int64_t k = 0; given < budget; ++k, ++given) ++share[remainders[k].second];

  out.shards = static_cast<int>(shards);
  out.result.gradient.assign(n, 0);
  GotDOptions each = options;
  int64_t begin = 0;
  for (int64_t s = 0; s < shards; ++s) {
    std::vector<std::vector<float>> part;
    part.reserve(sizes[s]);
    for (int64_t k = 0; k < sizes[s]; ++k) part.push_back(candidates[order[begin + k]]);
    each.budget = std::max<int64_t>(1, share[s]);
    ASSIGN_OR_RETURN(GotDResult r, GotDSelect(part, targets, each));
    if (s == 0) {
      each.epsilon = r.epsilon;  // every shard regularised as the first
      out.result.median_cost = r.median_cost;
      out.result.epsilon = r.epsilon;
    }
    for (int64_t k = 0; k < sizes[s]; ++k) out.result.gradient[order[begin + k]] = r.gradient[k];
    for (int64_t k = 0; k < share[s]; ++k) out.result.selected.push_back(order[begin + r.selected[k]]);
    out.max_iterations = std::max(out.max_iterations, r.duals.iterations);
    out.max_marginal_error = std::max(out.max_marginal_error, r.duals.marginal_error);
    out.result.duals = std::move(r.duals);
    begin += sizes[s];
  }
  return out;
}

}  // namespace lathe::engine
