#include "worker/engine/model/weights.h"

#include <cstdint>
#include <fstream>
#include <vector>

#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

namespace st = ::lathe::safetensors;

template <typename T>
absl::Span<const std::byte> Bytes(const std::vector<T>& v) {
  return {reinterpret_cast<const std::byte*>(v.data()), v.size() * sizeof(T)};
}

TEST(WeightsTest, ConvertsHalfAndBfloat16ToFloat32) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/w.safetensors";
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x3800};  // 1, -2, 0.5
  const std::vector<uint16_t> bf16 = {0x3f80, 0xc040};         // 1, -3
  const std::vector<float> f32 = {1.5f, 2.5f, 3.5f, 4.5f};
  ASSERT_TRUE(st::WriteFile(path,
                            {{"h", st::Dtype::kF16, {3}, Bytes(f16)},
                             {"b", st::Dtype::kBF16, {2, 1}, Bytes(bf16)},
                             {"f", st::Dtype::kF32, {2, 2}, Bytes(f32)}},
                            {})
                  .ok());
  absl::StatusOr<TensorMap> tensors = LoadSafetensors(path);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  for (const auto& [name, t] : *tensors) EXPECT_EQ(t.dtype(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(tensors->at("h"), torch::tensor({1.0f, -2.0f, 0.5f})));
  EXPECT_TRUE(torch::equal(tensors->at("b"), torch::tensor({{1.0f}, {-3.0f}})));
  EXPECT_EQ(tensors->at("f").sizes().vec(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(tensors->at("f")[1][1].item<float>(), 4.5f);
}

TEST(WeightsTest, RejectsIntegerTensorsAndMissingFiles) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/w.safetensors";
  const std::vector<int64_t> ids = {1, 2};
  ASSERT_TRUE(st::WriteFile(path, {{"ids", st::Dtype::kI64, {2}, Bytes(ids)}}, {}).ok());
  absl::StatusOr<TensorMap> tensors = LoadSafetensors(path);
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tensors.status().message().find("\"ids\" has dtype I64"), std::string::npos)
      << tensors.status();
  EXPECT_EQ(LoadModelWeights(dir.path() + "/none").status().code(),
            absl::StatusCode::kNotFound);
  // Asked for (S²FT's indices): kept as int64, written back as I64.
  tensors = LoadSafetensors(path, /*int64_indices=*/true);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  EXPECT_EQ(tensors->at("ids").scalar_type(), torch::kInt64);
  EXPECT_EQ(tensors->at("ids")[1].item<int64_t>(), 2);
  ASSERT_TRUE(SaveSafetensors(path, *tensors, {}).ok());
  absl::StatusOr<st::Header> header = st::ReadHeaderFile(path);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->tensors[0].dtype, st::Dtype::kI64);
}

TEST(WeightsTest, LoadsShardsListedInTheIndex) {
  testing::TempDir dir;
  const std::vector<float> a = {1, 2}, b = {3};
  ASSERT_TRUE(st::WriteFile(dir.path() + "/model-00001-of-00002.safetensors",
                            {{"a", st::Dtype::kF32, {2}, Bytes(a)}}, {})
                  .ok());
  ASSERT_TRUE(st::WriteFile(dir.path() + "/model-00002-of-00002.safetensors",
                            {{"b", st::Dtype::kF32, {1}, Bytes(b)}}, {})
                  .ok());
  std::ofstream(dir.path() + "/model.safetensors.index.json")
      << R"({"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
         R"("b":"model-00002-of-00002.safetensors"}})";
  absl::StatusOr<TensorMap> tensors = LoadModelWeights(dir.path());
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  EXPECT_EQ(tensors->size(), 2u);
  EXPECT_EQ(tensors->at("b")[0].item<float>(), 3.0f);
}

}  // namespace
}  // namespace lathe::engine
