#include "worker/engine/engine_cli.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

int RunCli(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return RunEngineCommand(static_cast<int>(argv.size()), argv.data());
}

TEST(EngineCliTest, BadUsageReturnsTwo) {
  EXPECT_EQ(RunCli({"lathe-worker"}), 2);
  EXPECT_EQ(RunCli({"lathe-worker", "frobnicate"}), 2);
  EXPECT_EQ(RunCli({"lathe-worker", "make-demo", "DIR"}), 2);
}

TEST(EngineCliTest, MissingSpecFails) {
  EXPECT_EQ(RunCli({"lathe-worker", "train", "/nonexistent/spec.json"}), 1);
}

TEST(EngineCliTest, MakeDemoThenTrainPrintsStepsAndSummary) {
  testing::TempDir dir;
  ASSERT_EQ(RunCli({"lathe-worker", "make-demo", "--out", dir.path()}), 0);
  // One epoch through a spec with a relative output_dir.
  std::ifstream in(dir.path() + "/spec.json");
  nlohmann::json spec = nlohmann::json::parse(in);
  spec["n_epochs"] = 1;
  spec["output_dir"] = "out";
  std::ofstream(dir.path() + "/one.json") << spec.dump();

  ::testing::internal::CaptureStdout();
  const int code = RunCli({"lathe-worker", "train", dir.path() + "/one.json"});
  std::stringstream out(::testing::internal::GetCapturedStdout());
  ASSERT_EQ(code, 0);
  std::string line;
  std::vector<nlohmann::json> lines;
  while (std::getline(out, line)) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 21u);  // 20 steps + summary
  EXPECT_EQ(lines[0]["step"], 1);
  EXPECT_EQ(lines[19]["total_steps"], 20);
  EXPECT_EQ(lines[20]["summary"]["steps"], 20);
  EXPECT_EQ(lines[20]["summary"]["adapter_dir"], dir.path() + "/out");
  EXPECT_TRUE(
      std::filesystem::exists(dir.path() + "/out/adapter_model.safetensors"));
}

}  // namespace
}  // namespace lathe::engine
