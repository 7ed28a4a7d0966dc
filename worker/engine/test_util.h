// Helpers shared by the engine's tests.
#ifndef LATHE_WORKER_ENGINE_TEST_UTIL_H_
#define LATHE_WORKER_ENGINE_TEST_UTIL_H_

#include <cstdlib>
#include <filesystem>
#include <string>

namespace lathe::engine::testing {

// The tiny-tinyllama-spm fixture folder (computed with Hugging Face
// transformers + PEFT), or "" when the shared fixtures are absent.
inline std::string TinyLlamaFixture() {
  const std::filesystem::path dir =
      std::filesystem::path(LATHE_FIXTURES_DIR) / "tiny-tinyllama-spm";
  return std::filesystem::exists(dir / "model" / "config.json") ? dir.string()
                                                                : "";
}

// A fresh directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "lathe_engine.XXXXXX")
            .string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace lathe::engine::testing

#define LATHE_SKIP_WITHOUT_FIXTURES(dir)                                \
  if ((dir).empty()) {                                                  \
    GTEST_SKIP() << "shared fixtures not found at " LATHE_FIXTURES_DIR; \
  }

#endif  // LATHE_WORKER_ENGINE_TEST_UTIL_H_
