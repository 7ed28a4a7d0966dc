#include "server/store/blob_store.h"

#include <sys/resource.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <thread>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "common/sha256.h"
#include "server/store/store.h"

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

TEST(BlobStoreTest, OpenRemovesBlobsNoRecordNamesAndKeepsTheRest) {
  std::string root = ::testing::TempDir() + "/blobs4";
  fs::remove_all(root);
  std::string kept, stray;
  {
    auto blobs = BlobStore::Open(root);
    ASSERT_TRUE(blobs.ok());
    for (std::string* sha : {&kept, &stray}) {
      auto w = (*blobs)->NewWriter();
      ASSERT_TRUE((*w)->Append(sha == &kept ? "recorded" : "crashed before its record").ok());
      *sha = *(*w)->Commit();
    }
    auto store = Store::Open(root + "/lathe.db");
    ASSERT_TRUE(store.ok());
    v1::File f;
    f.set_id("file-1");
    f.set_sha256(kept);
    ASSERT_TRUE((*store)->InsertFile(f).ok());
  }
  std::ofstream(root + "/blobs/README") << "not a blob: left alone";
  auto blobs = BlobStore::Open(root);
  ASSERT_TRUE(blobs.ok());
  auto store = Store::Open(root + "/lathe.db");
  ASSERT_TRUE(store.ok());
  auto keep = (*store)->ReferencedBlobs();
  ASSERT_TRUE(keep.ok());
  EXPECT_EQ(*(*blobs)->RemoveUnreferenced(*keep), 1);
  EXPECT_TRUE((*blobs)->Exists(kept));
  EXPECT_FALSE((*blobs)->Exists(stray));
  EXPECT_TRUE(fs::exists(root + "/blobs/README"));
  // No record at all: nothing is deleted (a missing or wrong database).
  EXPECT_EQ(*(*blobs)->RemoveUnreferenced({}), 0);
  EXPECT_TRUE((*blobs)->Exists(kept));
}

TEST(BlobStoreTest, ABlobCommittedForANewRecordIsNotDeletedUnderIt) {
  std::string root = ::testing::TempDir() + "/blobs6";
  fs::remove_all(root);
  auto blobs = BlobStore::Open(root);
  ASSERT_TRUE(blobs.ok());
  // An upload commits bytes that a file being deleted also had; its record
  // is written only after the commit.
  auto w = (*blobs)->NewWriter();
  ASSERT_TRUE((*w)->Append("shared bytes").ok());
  auto sha = (*w)->Commit();
  ASSERT_TRUE(sha.ok());
  std::atomic<bool> recorded{false};
  std::thread remover([&] {
    absl::Status st = (*blobs)->RemoveIfUnreferenced(
        *sha, [&]() -> absl::StatusOr<bool> { return !recorded.load(); });
    EXPECT_TRUE(st.ok()) << st;
  });
  absl::SleepFor(absl::Milliseconds(50));  // the remover now waits for the writer
  recorded.store(true);
  w->reset();
  remover.join();
  EXPECT_TRUE((*blobs)->Exists(*sha));
  // Unreferenced and unpinned: it goes.
  ASSERT_TRUE((*blobs)->RemoveIfUnreferenced(*sha, [] { return absl::StatusOr<bool>(true); }).ok());
  EXPECT_FALSE((*blobs)->Exists(*sha));
}

TEST(BlobStoreTest, AWriteThatFailsIsAnErrorAndLeavesNothing) {
  std::string root = ::testing::TempDir() + "/blobs5";
  fs::remove_all(root);
  auto blobs = BlobStore::Open(root);
  ASSERT_TRUE(blobs.ok());
  auto w = (*blobs)->NewWriter();
  ASSERT_TRUE(w.ok());
  // Past RLIMIT_FSIZE a write fails with EFBIG (as on a full disk).
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit low = old_limit;
  low.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &low), 0);
  absl::Status st = (*w)->Append(std::string(8192, 'x'));
  setrlimit(RLIMIT_FSIZE, &old_limit);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
  w->reset();
  EXPECT_TRUE(fs::is_empty(root + "/tmp"));
  EXPECT_TRUE(fs::is_empty(root + "/blobs"));
}

}  // namespace
}  // namespace lathe::store
