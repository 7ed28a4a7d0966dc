#include "worker/engine/data/curation.h"

#include <algorithm>
#include <limits>
#include <map>
#include <string>
#include <unordered_map>

namespace lathe::engine {
namespace {

// splitmix64's finaliser: a well-mixed 64-bit hash of x.
uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// FNV-1a over a run of ids.
uint64_t HashIds(const int32_t* ids, size_t n) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (size_t i = 0; i < n; ++i) {
    uint32_t v = static_cast<uint32_t>(ids[i]);
    for (int b = 0; b < 4; ++b) {
      h ^= (v >> (8 * b)) & 0xFF;
      h *= 0x100000001B3ULL;
    }
  }
  return h;
}

std::string IdsKey(const std::vector<int32_t>& ids) {
  return std::string(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int32_t));
}

}  // namespace

std::vector<uint64_t> MinHashSignature(const std::vector<int32_t>& ids,
                                       const MinHashOptions& o) {
  std::vector<uint64_t> sig(o.num_hashes, std::numeric_limits<uint64_t>::max());
  if (ids.empty()) return sig;
  const size_t k = std::min<size_t>(o.shingle, ids.size());
  std::vector<uint64_t> salts(o.num_hashes);
  for (int i = 0; i < o.num_hashes; ++i) salts[i] = Mix(o.seed * 1000003ULL + i + 1);
  for (size_t start = 0; start + k <= ids.size(); ++start) {
    const uint64_t shingle = HashIds(ids.data() + start, k);
    for (int i = 0; i < o.num_hashes; ++i) {
      sig[i] = std::min(sig[i], Mix(shingle ^ salts[i]));
    }
  }
  return sig;
}

double EstimatedJaccard(const std::vector<uint64_t>& a, const std::vector<uint64_t>& b) {
  if (a.empty() || a.size() != b.size()) return 0;
  size_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  return static_cast<double>(same) / a.size();
}

std::vector<DuplicateInfo> FindDuplicates(const std::vector<std::vector<int32_t>>& train,
                                          const std::vector<std::vector<int32_t>>& validation,
                                          const MinHashOptions& o) {
  const int rows = std::max(1, o.num_hashes / std::max(1, o.bands));
  // Band buckets: (band, hash of its rows) -> examples, in order.
  using Buckets = std::unordered_map<uint64_t, std::vector<int64_t>>;
  auto band_keys = [&](const std::vector<uint64_t>& sig) {
    std::vector<uint64_t> keys;
    for (int b = 0; b + rows <= static_cast<int>(sig.size()); b += rows) {
      uint64_t h = Mix(static_cast<uint64_t>(b));
      for (int r = 0; r < rows; ++r) h = Mix(h ^ sig[b + r]);
      keys.push_back(h);
    }
    return keys;
  };
  // Candidates of `sig` in `buckets` (each once, in increasing order), and
  // the best of them at >= threshold.
  auto best_near = [&](const std::vector<uint64_t>& sig, const std::vector<uint64_t>& keys,
                       const Buckets& buckets, const std::vector<std::vector<uint64_t>>& sigs,
                       int64_t* index, double* jaccard) {
    std::vector<int64_t> candidates;
    for (uint64_t key : keys) {
      auto it = buckets.find(key);
      if (it != buckets.end()) candidates.insert(candidates.end(), it->second.begin(), it->second.end());
    }
    std::sort(candidates.begin(), candidates.end());
    candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
    for (int64_t c : candidates) {
      const double j = EstimatedJaccard(sig, sigs[c]);
      if (j >= o.threshold && j > *jaccard) {
        *jaccard = j;
        *index = c;
      }
    }
  };

  std::vector<std::vector<uint64_t>> valid_sigs;
  Buckets valid_buckets;
  std::map<std::string, int64_t> valid_exact;
  for (size_t v = 0; v < validation.size(); ++v) {
    valid_exact.emplace(IdsKey(validation[v]), static_cast<int64_t>(v));
    valid_sigs.push_back(MinHashSignature(validation[v], o));
    for (uint64_t key : band_keys(valid_sigs.back())) valid_buckets[key].push_back(v);
  }
  std::vector<DuplicateInfo> out(train.size());
  std::vector<std::vector<uint64_t>> sigs;
  Buckets buckets;
  std::map<std::string, int64_t> exact;
  for (size_t i = 0; i < train.size(); ++i) {
    DuplicateInfo& info = out[i];
    const std::string key = IdsKey(train[i]);
    const std::vector<uint64_t> sig = MinHashSignature(train[i], o);
    const std::vector<uint64_t> keys = band_keys(sig);
    if (auto it = exact.find(key); it != exact.end()) {
      info.exact_of = it->second;
    } else {
      exact.emplace(key, static_cast<int64_t>(i));
      best_near(sig, keys, buckets, sigs, &info.near_of, &info.near_jaccard);
    }
    if (auto it = valid_exact.find(key); it != valid_exact.end()) {
      info.validation_exact = it->second;
    } else {
      best_near(sig, keys, valid_buckets, valid_sigs, &info.validation_near,
                &info.validation_jaccard);
    }
    sigs.push_back(sig);
    for (uint64_t k : keys) buckets[k].push_back(static_cast<int64_t>(i));
  }
  return out;
}

}  // namespace lathe::engine
