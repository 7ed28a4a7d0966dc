#include "worker/engine/data/mixture.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace lathe::engine {
namespace {

// A uniform double in [0, 1) from one 64-bit draw: ours, so the same on
// every standard library (std::uniform_real_distribution is not).
double Uniform(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

}  // namespace

size_t MixturePlan::EpochSize() const {
  size_t total = concat ? 0 : drawn;
  for (const Source& s : sources) {
    if (s.proportional) {
      total += s.fixed;
    } else if (concat) {
      total += s.size;
    }
  }
  return total;
}

MixturePlan PlanMixture(const MixtureSpec& spec,
                        const std::vector<size_t>& sizes) {
  MixturePlan plan;
  plan.concat = spec.strategy == "concat";
  double total_weight = 0, proportions = 0;
  for (size_t i = 0; i < spec.sources.size(); ++i) {
    const MixtureSourceSpec& s = spec.sources[i];
    if (s.proportion > 0) {
      proportions += s.proportion;
    } else {
      total_weight +=
          spec.strategy == "temperature"
              ? std::pow(static_cast<double>(sizes[i]), 1.0 / spec.temperature)
              : s.weight;
    }
  }
  size_t offset = 0;
  size_t drawn_examples = 0;  // what the drawn sources give an epoch (concat)
  for (size_t i = 0; i < spec.sources.size(); ++i) {
    const MixtureSourceSpec& s = spec.sources[i];
    MixturePlan::Source source{
        .offset = offset, .size = sizes[i], .proportional = s.proportion > 0};
    offset += sizes[i];
    if (s.proportion == 0) {
      if (!plan.concat) {
        source.probability = (spec.strategy == "temperature"
                                  ? std::pow(static_cast<double>(sizes[i]),
                                             1.0 / spec.temperature)
                                  : s.weight) /
                             total_weight;
      }
      drawn_examples += sizes[i];
    }
    plan.sources.push_back(source);
  }
  if (!plan.concat) {
    bool first = true;
    for (const MixturePlan::Source& s : plan.sources) {
      if (s.proportional) continue;
      const double exhausted = static_cast<double>(s.size) / s.probability;
      const size_t draws =
          spec.stop == "first_exhausted"
              ? static_cast<size_t>(std::floor(exhausted + 1e-9))
              : static_cast<size_t>(std::ceil(exhausted - 1e-9));
      plan.drawn = first ? draws
                   : spec.stop == "first_exhausted"
                       ? std::min(plan.drawn, draws)
                       : std::max(plan.drawn, draws);
      first = false;
    }
    plan.drawn = std::max<size_t>(plan.drawn, 1);
    drawn_examples = plan.drawn;
  }
  for (size_t i = 0; i < spec.sources.size(); ++i) {
    const double r = spec.sources[i].proportion;
    if (r == 0) continue;
    plan.sources[i].fixed = static_cast<size_t>(std::llround(
        r / (1 - proportions) * static_cast<double>(drawn_examples)));
  }
  return plan;
}

std::vector<size_t> DrawEpoch(const MixturePlan& plan, std::mt19937_64& rng) {
  std::vector<size_t> counts(plan.sources.size(), 0);
  for (size_t i = 0; i < plan.sources.size(); ++i) {
    const MixturePlan::Source& s = plan.sources[i];
    if (s.proportional) {
      counts[i] = s.fixed;
    } else if (plan.concat) {
      counts[i] = s.size;
    }
  }
  if (!plan.concat) {
    for (size_t d = 0; d < plan.drawn; ++d) {
      double u = Uniform(rng);
      size_t pick = 0;
      for (size_t i = 0; i < plan.sources.size(); ++i) {
        if (plan.sources[i].proportional) continue;
        pick = i;  // the last drawn source takes rounding leftovers
        if (u < plan.sources[i].probability) break;
        u -= plan.sources[i].probability;
      }
      ++counts[pick];
    }
  }
  std::vector<size_t> order;
  for (size_t i = 0; i < plan.sources.size(); ++i) {
    const MixturePlan::Source& s = plan.sources[i];
    std::vector<size_t> pass(s.size);
    for (size_t taken = 0; taken < counts[i];) {
      std::iota(pass.begin(), pass.end(), s.offset);
      std::shuffle(pass.begin(), pass.end(), rng);
      const size_t n = std::min(pass.size(), counts[i] - taken);
      order.insert(order.end(), pass.begin(), pass.begin() + n);
      taken += n;
    }
  }
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

std::vector<size_t> Subsample(size_t n, double fraction, uint64_t seed) {
  const auto keep =
      static_cast<size_t>(std::floor(fraction * static_cast<double>(n) + 1e-9));
  std::vector<size_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  if (keep >= n) return all;
  std::mt19937_64 rng(seed);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(keep);
  std::sort(all.begin(), all.end());
  return all;
}

absl::StatusOr<MixtureData> LoadMixture(
    const DataSpec& data, const Tokenizer& tokenizer,
    const absl::StatusOr<ChatTemplate>& chat_template, uint64_t seed) {
  MixtureData out;
  std::vector<size_t> sizes;
  const std::vector<MixtureSourceSpec>& sources = data.mixture.sources;
  for (size_t i = 0; i < sources.size(); ++i) {
    const MixtureSourceSpec& s = sources[i];
    ASSIGN_OR_RETURN(Dataset dataset,
                     LoadChatDataset(s.file, tokenizer, chat_template,
                                     data.max_seq_len, s.file_name));
    out.truncated += dataset.truncated;
    // One subsample per source, the same on every attempt of the run.
    const std::vector<size_t> kept =
        Subsample(dataset.examples.size(), s.fraction, seed + 0x9e37 * (i + 1));
    if (kept.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "field \"data.mixture.sources[", i, "].fraction\": ", s.fraction,
          " of ", dataset.examples.size(), " examples leaves none"));
    }
    for (size_t k : kept)
      out.examples.push_back(std::move(dataset.examples[k]));
    sizes.push_back(kept.size());
  }
  out.plan = PlanMixture(data.mixture, sizes);
  return out;
}

}  // namespace lathe::engine
