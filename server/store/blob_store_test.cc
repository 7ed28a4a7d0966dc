#include "server/store/blob_store.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "common/sha256.h"

namespace lathe::store {
namespace {

namespace fs = std::filesystem;

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(BlobStoreTest, CommitNamesBlobBySha256) {
  std::string root = ::testing::TempDir() + "/blobs1";
  fs::remove_all(root);
  auto store = BlobStore::Open(root);
  ASSERT_TRUE(store.ok());
  auto w = (*store)->NewWriter();
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Append("hello ").ok());
  ASSERT_TRUE((*w)->Append("world").ok());
  auto sha = (*w)->Commit();
  ASSERT_TRUE(sha.ok());
  EXPECT_EQ(*sha, Sha256Hex("hello world"));
  EXPECT_TRUE((*store)->Exists(*sha));
  EXPECT_EQ(Slurp((*store)->PathFor(*sha)), "hello world");
  EXPECT_TRUE(fs::is_empty(root + "/tmp"));
}

TEST(BlobStoreTest, AbandonedOrMismatchedWritesLeaveNothing) {
  std::string root = ::testing::TempDir() + "/blobs2";
  fs::remove_all(root);
  auto store = BlobStore::Open(root);
  ASSERT_TRUE(store.ok());
  {
    auto w = (*store)->NewWriter();
    ASSERT_TRUE((*w)->Append("partial").ok());
  }  // destroyed without Commit
  {
    auto w = (*store)->NewWriter();
    ASSERT_TRUE((*w)->Append("data").ok());
    auto sha = (*w)->Commit(std::string(64, '0'));
    EXPECT_TRUE(absl::IsDataLoss(sha.status())) << sha.status();
  }
  EXPECT_TRUE(fs::is_empty(root + "/tmp"));
  EXPECT_TRUE(fs::is_empty(root + "/blobs"));
}

TEST(BlobStoreTest, OpenClearsStaleTemporaries) {
  std::string root = ::testing::TempDir() + "/blobs3";
  fs::remove_all(root);
  fs::create_directories(root + "/tmp");
  std::ofstream(root + "/tmp/blob-stale") << "left by a crash";
  auto store = BlobStore::Open(root);
  ASSERT_TRUE(store.ok());
  EXPECT_TRUE(fs::is_empty(root + "/tmp"));
}

}  // namespace
}  // namespace lathe::store
