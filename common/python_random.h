// CPython's `random` module, bit for bit, for the few calls a reference
// implementation makes that Lathe must reproduce exactly (S²FT's channel
// selection, METHODS.md §6.1, draws with random.seed(seed) and
// random.sample). The generator is MT19937 seeded as CPython's
// random_seed() seeds it from an int (init_by_array over the absolute
// value's 32-bit words, least significant first); getrandbits, _randbelow
// and sample follow Lib/random.py of CPython 3.11. Torch- and proto-free.
#ifndef LATHE_COMMON_PYTHON_RANDOM_H_
#define LATHE_COMMON_PYTHON_RANDOM_H_

#include <array>
#include <cstdint>
#include <vector>

namespace lathe {

class PythonRandom {
 public:
  // random.seed(seed) for an int seed (negative seeds use |seed|, as
  // CPython does).
  explicit PythonRandom(int64_t seed);

  // random.getrandbits(k), 0 <= k <= 64.
  uint64_t GetRandBits(int k);

  // random._randbelow(n): uniform in [0, n) by rejection on bit_length(n)
  // bits. REQUIRES: n >= 1.
  uint64_t RandBelow(uint64_t n);

  // random.sample(range(n), k) in the order CPython returns it (the pool
  // method for small populations, the set method otherwise, as
  // Lib/random.py chooses). REQUIRES: 0 <= k <= n.
  std::vector<int64_t> SampleRange(int64_t n, int64_t k);

 private:
  uint32_t Next();  // genrand_uint32

  std::array<uint32_t, 624> state_{};
  int index_ = 624;
};

}  // namespace lathe

#endif  // LATHE_COMMON_PYTHON_RANDOM_H_
