#include "worker/engine/checkpoint/checkpoint.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "worker/engine/text/json_file.h"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

TrainerState SampleState() {
  TrainerState s;
  s.step = 7;
  s.total_steps = 20;
  s.epoch = 1;
  s.cursor = 12;
  s.trained_tokens = 4096;
  s.first_loss = 5.5;
  s.last_loss = 2.25;
  s.data_rng = "1 2 3";
  s.data_order = {3, 0, 2, 1};
  s.torch_rng = torch::arange(16, torch::kInt64).to(torch::kUInt8);
  s.optimizer_steps = 7;
  s.optimizer["exp_avg/w"] = torch::full({2, 3}, 0.5);
  s.optimizer["exp_avg_sq/w"] = torch::full({2, 3}, 0.25);
  s.fingerprint = {{"seed", 42}, {"batch_size", 4}};
  return s;
}

TEST(CheckpointTest, TrainerStateRoundTrips) {
  testing::TempDir dir;
  ASSERT_TRUE(WriteTrainerState(dir.path(), SampleState()).ok());
  absl::StatusOr<TrainerState> read = ReadTrainerState(dir.path());
  ASSERT_TRUE(read.ok()) << read.status();
  const TrainerState want = SampleState();
  EXPECT_EQ(read->step, 7);
  EXPECT_EQ(read->total_steps, 20);
  EXPECT_EQ(read->epoch, 1);
  EXPECT_EQ(read->cursor, 12);
  EXPECT_EQ(read->trained_tokens, 4096);
  EXPECT_EQ(read->first_loss, 5.5);
  EXPECT_EQ(read->last_loss, 2.25);
  EXPECT_EQ(read->data_rng, "1 2 3");
  EXPECT_EQ(read->data_order, want.data_order);
  EXPECT_TRUE(torch::equal(read->torch_rng, want.torch_rng));
  EXPECT_EQ(read->torch_rng.scalar_type(), torch::kUInt8);
  EXPECT_EQ(read->optimizer_steps, 7);
  ASSERT_EQ(read->optimizer.size(), 2u);
  EXPECT_TRUE(torch::equal(read->optimizer.at("exp_avg/w"),
                           want.optimizer.at("exp_avg/w")));
  EXPECT_EQ(read->fingerprint, want.fingerprint);
}

TEST(CheckpointTest, MissingOrCorruptStateIsNamed) {
  testing::TempDir dir;
  absl::StatusOr<TrainerState> read = ReadTrainerState(dir.path());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(read.status().message().find("trainer_state.json"),
            std::string::npos);

  ASSERT_TRUE(WriteTrainerState(dir.path(), SampleState()).ok());
  std::filesystem::remove(dir.path() + "/trainer_state.safetensors");
  read = ReadTrainerState(dir.path());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(read.status().message().find("trainer_state.safetensors"),
            std::string::npos);

  std::ofstream(dir.path() + "/trainer_state.safetensors") << "garbage!!";
  read = ReadTrainerState(dir.path());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);

  std::ofstream(dir.path() + "/trainer_state.json") << R"({"step": "x"})";
  read = ReadTrainerState(dir.path());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(read.status().message().find("\"step\""), std::string::npos);

  std::ofstream(dir.path() + "/trainer_state.json") << "{not json";
  EXPECT_EQ(ReadTrainerState(dir.path()).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(CheckpointTest, FingerprintMismatchNamesTheOption) {
  const nlohmann::json saved = {{"seed", 42}, {"batch_size", 4}};
  EXPECT_TRUE(CheckFingerprint(saved, saved).ok());
  absl::Status status =
      CheckFingerprint(saved, {{"seed", 42}, {"batch_size", 8}});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("\"batch_size\""), std::string::npos);
  status = CheckFingerprint(saved, {{"seed", 42}, {"max_seq_len", 8}});
  EXPECT_NE(status.message().find("\"max_seq_len\""), std::string::npos);
}

TEST(CheckpointTest, CommitDirectoryReplacesAndListsFiles) {
  testing::TempDir root;
  const std::string dir = root.path() + "/step-3";
  for (int round = 0; round < 2; ++round) {
    const std::string temp = dir + ".tmp";
    std::filesystem::create_directories(temp);
    std::ofstream(temp + "/b.txt") << round;
    if (round == 0) std::ofstream(temp + "/a.txt") << "old";
    absl::StatusOr<std::vector<std::string>> files = CommitDirectory(temp, dir);
    ASSERT_TRUE(files.ok()) << files.status();
    EXPECT_FALSE(std::filesystem::exists(temp));
    if (round == 0) {
      EXPECT_EQ(*files, (std::vector<std::string>{"a.txt", "b.txt"}));
    } else {
      EXPECT_EQ(*files, (std::vector<std::string>{"b.txt"}));
      EXPECT_FALSE(std::filesystem::exists(dir + "/a.txt"));
    }
  }
}

}  // namespace
}  // namespace lathe::engine
