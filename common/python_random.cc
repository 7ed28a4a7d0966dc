#include "common/python_random.h"

#include <cmath>
#include <unordered_set>

namespace lathe {
namespace {

constexpr int kN = 624;
constexpr int kM = 397;
constexpr uint32_t kMatrixA = 0x9908b0dfU;
constexpr uint32_t kUpperMask = 0x80000000U;
constexpr uint32_t kLowerMask = 0x7fffffffU;

}  // namespace

PythonRandom::PythonRandom(int64_t seed) {
  // |seed| as an unsigned 64-bit value (|INT64_MIN| fits), in 32-bit words.
  const uint64_t magnitude =
      seed < 0 ? ~static_cast<uint64_t>(seed) + 1 : static_cast<uint64_t>(seed);
  std::vector<uint32_t> key = {static_cast<uint32_t>(magnitude)};
  if ((magnitude >> 32) != 0)
    key.push_back(static_cast<uint32_t>(magnitude >> 32));

  // init_genrand(19650218), then init_by_array(key), as in _randommodule.c.
  state_[0] = 19650218U;
  for (int i = 1; i < kN; ++i) {
    state_[i] = 1812433253U * (state_[i - 1] ^ (state_[i - 1] >> 30)) +
                static_cast<uint32_t>(i);
  }
  int i = 1;
  size_t j = 0;
  for (int k = std::max<int>(kN, static_cast<int>(key.size())); k > 0; --k) {
    state_[i] =
        (state_[i] ^ ((state_[i - 1] ^ (state_[i - 1] >> 30)) * 1664525U)) +
        key[j] + static_cast<uint32_t>(j);
    ++i;
    ++j;
    if (i >= kN) {
      state_[0] = state_[kN - 1];
      i = 1;
    }
    if (j >= key.size()) j = 0;
  }
  for (int k = kN - 1; k > 0; --k) {
    state_[i] =
        (state_[i] ^ ((state_[i - 1] ^ (state_[i - 1] >> 30)) * 1566083941U)) -
        static_cast<uint32_t>(i);
    ++i;
    if (i >= kN) {
      state_[0] = state_[kN - 1];
      i = 1;
    }
  }
  state_[0] = 0x80000000U;  // MSB is 1, assuring a non-zero initial array
  index_ = kN;
}

uint32_t PythonRandom::Next() {
  if (index_ >= kN) {
    for (int k = 0; k < kN; ++k) {
      const uint32_t y =
          (state_[k] & kUpperMask) | (state_[(k + 1) % kN] & kLowerMask);
      state_[k] = state_[(k + kM) % kN] ^ (y >> 1) ^ ((y & 1U) ? kMatrixA : 0U);
    }
    index_ = 0;
  }
  uint32_t y = state_[index_++];
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680U;
  y ^= (y << 15) & 0xefc60000U;
  y ^= (y >> 18);
  return y;
}

uint64_t PythonRandom::GetRandBits(int k) {
  if (k <= 0) return 0;
  if (k <= 32) return Next() >> (32 - k);
  // _random_Random_getrandbits_impl: 32-bit words, least significant
  // first, the last one cut to the bits that remain.
  uint64_t low = Next();
  const int rest = k - 32;
  uint64_t high = Next() >> (32 - rest);
  return low | (high << 32);
}

uint64_t PythonRandom::RandBelow(uint64_t n) {
  int k = 0;  // n.bit_length()
  for (uint64_t v = n; v != 0; v >>= 1) ++k;
  uint64_t r = GetRandBits(k);
  while (r >= n) r = GetRandBits(k);
  return r;
}

std::vector<int64_t> PythonRandom::SampleRange(int64_t n, int64_t k) {
  std::vector<int64_t> result(static_cast<size_t>(k));
  // setsize = 21, plus 4 ** ceil(log(k * 3, 4)) for k > 5: whether a list
  // pool is smaller than a set of k.
  double setsize = 21;
  if (k > 5) {
    setsize += std::pow(
        4.0, std::ceil(std::log(static_cast<double>(k * 3)) / std::log(4.0)));
  }
  if (static_cast<double>(n) <= setsize) {
    std::vector<int64_t> pool(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) pool[i] = i;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t j =
          static_cast<int64_t>(RandBelow(static_cast<uint64_t>(n - i)));
      result[i] = pool[j];
      pool[j] = pool[n - i - 1];
    }
    return result;
  }
  std::unordered_set<int64_t> selected;
  for (int64_t i = 0; i < k; ++i) {
    int64_t j = static_cast<int64_t>(RandBelow(static_cast<uint64_t>(n)));
    while (selected.count(j) != 0) {
      j = static_cast<int64_t>(RandBelow(static_cast<uint64_t>(n)));
    }
    selected.insert(j);
    result[i] = j;
  }
  return result;
}

}  // namespace lathe
