// Which decoder layers a setting names: indices ("3"), inclusive ranges
// ("2-5") and CoFiTune's named depth bands (METHODS.md §2.3), resolved
// against a model's layer count. Torch- and proto-free: lathed checks the
// syntax (and the bounds, when it knows the model) with the same rules the
// engine applies.
#ifndef LATHE_COMMON_LAYER_RANGES_H_
#define LATHE_COMMON_LAYER_RANGES_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lathe {

// The named bands for a model of L layers (⌊·⌋ throughout):
//   bottom1 [0, L/4)     bottom2 [L/4, L/2)   middle [L/2, 3L/4)
//   top [3L/4, L)        bottom-plus [0, L/2) middle-plus [L/4, 3L/4)
//   top-plus [L/2, L)
// (for L = 32: 0-7, 8-15, 16-23, 24-31, 0-15, 8-23, 16-31).
inline constexpr const char* kLayerBands[] = {
    "bottom1",     "bottom2",     "middle",  "top",
    "bottom-plus", "middle-plus", "top-plus"};

// OK when every entry is an index, a range A-B with A <= B, or a band.
// INVALID_ARGUMENT "<field>[i]: …" naming the entry otherwise.
absl::Status CheckLayerRanges(const std::vector<std::string>& ranges,
                              const std::string& field);

// The layers the entries name, sorted, each once. INVALID_ARGUMENT
// "<field>[i]: …" for a malformed entry, an index >= num_layers, or a band
// that is empty for this model (bottom1 of a 3-layer model).
absl::StatusOr<std::vector<int>> ResolveLayerRanges(
    const std::vector<std::string>& ranges, int num_layers,
    const std::string& field);

}  // namespace lathe

#endif  // LATHE_COMMON_LAYER_RANGES_H_
