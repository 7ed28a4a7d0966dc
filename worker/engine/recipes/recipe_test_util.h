// Helpers shared by the tests that train the demo (cli/demo.h) through a
// recipe and compare what runs wrote.
#ifndef LATHE_WORKER_ENGINE_RECIPES_RECIPE_TEST_UTIL_H_
#define LATHE_WORKER_ENGINE_RECIPES_RECIPE_TEST_UTIL_H_

#include <torch/torch.h>

#include <algorithm>
#include <string>

#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "worker/engine/model/weights.h"
#include "worker/engine/spec/run_spec.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine::testing {

// The demo's spec (`demo_dir`/spec.json, as MakeDemo writes it), writing its
// result under `out`.
inline RunSpec DemoRunSpec(const std::string& demo_dir, const std::string& out) {
  absl::StatusOr<nlohmann::json> json = ReadJsonFile(demo_dir + "/spec.json");
  EXPECT_TRUE(json.ok()) << json.status();
  absl::StatusOr<RunSpec> spec = ParseRunSpec(*json, demo_dir);
  EXPECT_TRUE(spec.ok()) << spec.status();
  spec->output.dir = out;
  return *spec;
}

// The largest absolute difference between same-named tensors of two
// safetensors files; 1e9 when either cannot be read, is empty, or their
// names differ.
inline double MaxTensorDifference(const std::string& a, const std::string& b) {
  absl::StatusOr<TensorMap> x = LoadSafetensors(a);
  absl::StatusOr<TensorMap> y = LoadSafetensors(b);
  EXPECT_TRUE(x.ok() && y.ok()) << a << " " << b;
  if (!x.ok() || !y.ok() || x->size() != y->size() || x->empty()) return 1e9;
  double max = 0;
  for (const auto& [name, t] : *x) {
    if (!y->contains(name)) return 1e9;
    max = std::max(max, (t - y->at(name)).abs().max().item<double>());
  }
  return max;
}

}  // namespace lathe::engine::testing

#endif  // LATHE_WORKER_ENGINE_RECIPES_RECIPE_TEST_UTIL_H_
