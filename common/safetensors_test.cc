#include "common/safetensors.h"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace lathe::safetensors {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "st_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes a file with the given JSON header and `data_size` zero bytes.
  std::string WriteRaw(const std::string& json, size_t data_size,
                       uint64_t length_override = 0) {
    const std::string path = (dir_ / "raw.safetensors").string();
    std::ofstream out(path, std::ios::binary);
    uint64_t n = length_override ? length_override : json.size();
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>(n >> (8 * i)));
    out << json << std::string(data_size, '\0');
    return path;
  }

  // The error message of reading a file with `json` and `data_size` bytes.
  std::string ErrorOf(const std::string& json, size_t data_size) {
    absl::StatusOr<Header> header = ReadHeaderFile(WriteRaw(json, data_size));
    EXPECT_FALSE(header.ok()) << json;
    if (header.ok()) return "";
    EXPECT_EQ(header.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(header.status().message().find("raw.safetensors"),
              std::string::npos)
        << header.status();
    return std::string(header.status().message());
  }

  fs::path dir_;
};

TEST_F(SafetensorsTest, RoundTripsTensorsAndMetadata) {
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  const std::vector<uint16_t> b = {0x3c00, 0xc000};  // F16 1.0, -2.0
  const std::string path = (dir_ / "x.safetensors").string();
  ASSERT_TRUE(
      WriteFile(path,
                {{"a.weight",
                  Dtype::kF32,
                  {2, 3},
                  absl::MakeSpan(reinterpret_cast<const std::byte*>(a.data()),
                                 a.size() * 4)},
                 {"b",
                  Dtype::kF16,
                  {2},
                  absl::MakeSpan(reinterpret_cast<const std::byte*>(b.data()),
                                 b.size() * 2)}},
                {{"format", "pt"}})
          .ok());

  absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const Header& header = (*file)->header();
  EXPECT_EQ(header.data_start % 8, 0u);
  EXPECT_EQ(header.metadata.at("format"), "pt");
  ASSERT_EQ(header.tensors.size(), 2u);
  const TensorInfo* ta = header.Find("a.weight");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->dtype, Dtype::kF32);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ta->numel(), 6);
  absl::Span<const std::byte> data = (*file)->Data(*ta);
  ASSERT_EQ(data.size(), 24u);
  EXPECT_EQ(reinterpret_cast<const float*>(data.data())[2], 3.25f);
  const TensorInfo* tb = header.Find("b");
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(DtypeName(tb->dtype), "F16");
  EXPECT_EQ(reinterpret_cast<const uint16_t*>((*file)->Data(*tb).data())[1],
            0xc000);
  EXPECT_EQ(header.Find("missing"), nullptr);
  // No temp file is left beside the target.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), {}), 1);
}

TEST_F(SafetensorsTest, WriterRejectsSizeMismatchAndDuplicates) {
  const std::vector<float> a = {1, 2, 3};
  auto span = absl::MakeSpan(reinterpret_cast<const std::byte*>(a.data()), 12);
  const std::string path = (dir_ / "x.safetensors").string();
  EXPECT_EQ(WriteFile(path, {{"a", Dtype::kF32, {2, 2}, span}}, {}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      WriteFile(path,
                {{"a", Dtype::kF32, {3}, span}, {"a", Dtype::kF32, {3}, span}},
                {})
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(SafetensorsTest, ReadsEmptyTensorListAndScalar) {
  EXPECT_TRUE(ReadHeaderFile(WriteRaw("{}", 0)).ok());
  absl::StatusOr<Header> header = ReadHeaderFile(
      WriteRaw(R"({"s":{"dtype":"I64","shape":[],"data_offsets":[0,8]}})", 8));
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->tensors[0].numel(), 1);
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  absl::StatusOr<Header> header =
      ReadHeaderFile((dir_ / "nope.safetensors").string());
  EXPECT_EQ(header.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(header.status().message().find("nope.safetensors"),
            std::string::npos);
}

TEST_F(SafetensorsTest, ShortFile) {
  const std::string path = (dir_ / "raw.safetensors").string();
  std::ofstream(path) << "abc";
  absl::StatusOr<Header> header = ReadHeaderFile(path);
  EXPECT_EQ(header.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(header.status().message().find("8-byte"), std::string::npos);
}

TEST_F(SafetensorsTest, HeaderLengthBeyondFile) {
  absl::StatusOr<Header> header = ReadHeaderFile(WriteRaw("{}", 0, 1000));
  EXPECT_EQ(header.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(header.status().message().find("beyond the file"),
            std::string::npos)
      << header.status();
}

TEST_F(SafetensorsTest, MalformedHeadersNameTheProblem) {
  EXPECT_NE(ErrorOf("{not json", 0).find("not valid JSON"), std::string::npos);
  EXPECT_NE(ErrorOf("[1,2]", 0).find("not a JSON object"), std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"t":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4)
          .find("\"dtype\""),
      std::string::npos);
  EXPECT_NE(ErrorOf(R"({"t":{"shape":[1],"data_offsets":[0,4]}})", 4)
                .find("\"dtype\""),
            std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4)
          .find("\"shape\""),
      std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4)
          .find("\"shape\""),
      std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4)
          .find("shape and dtype need 8"),
      std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4)
          .find("begin > end"),
      std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4)
          .find("\"data_offsets\""),
      std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8)
          .find("data section holds 8"),
      std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8)
          .find("hole"),
      std::string::npos);
  EXPECT_NE(ErrorOf(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                    R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                    8)
                .find("overlaps"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 0)
          .find("data section holds 0"),
      std::string::npos);
  EXPECT_NE(ErrorOf(R"({"__metadata__":{"format":1}})", 0).find("__metadata__"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"t":[1,2]})", 0).find("tensor \"t\""),
            std::string::npos);
  // Shape whose byte count overflows 64 bits.
  EXPECT_NE(ErrorOf(R"({"t":{"dtype":"F64","shape":[4294967296,4294967296],)"
                    R"("data_offsets":[0,0]}})",
                    0)
                .find("too many"),
            std::string::npos);
}

// Regression: the error for a deeply nested "shape" entry used to recurse
// once per level (dump()) and overflow the stack.
TEST_F(SafetensorsTest, DeeplyNestedShapeIsMalformedNotACrash) {
  const int depth = 200'000;
  const std::string nested = std::string(depth, '[') + std::string(depth, ']');
  EXPECT_NE(ErrorOf(R"({"t":{"dtype":"F32","shape":[)" + nested +
                        R"(],"data_offsets":[0,0]}})",
                    0)
                .find("\"shape\" has array"),
            std::string::npos);
}

TEST(DtypeTest, NamesAndSizes) {
  EXPECT_EQ(*ParseDtype("BF16"), Dtype::kBF16);
  EXPECT_EQ(DtypeSize(Dtype::kBF16), 2u);
  EXPECT_EQ(DtypeSize(Dtype::kI64), 8u);
  EXPECT_EQ(DtypeName(Dtype::kBool), "BOOL");
  EXPECT_EQ(ParseDtype("f32").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lathe::safetensors
