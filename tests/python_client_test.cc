// The Python client (clients/python) against a real lathed and worker: its
// unittest suite (the whole journey: upload with progress, create, a watch
// whose streams lathed ends every 2 s re-attached, wait, download and check
// the adapter; typed errors; and the offline tests) and the quick-start
// example, each a subprocess of LATHE_PYTHON3 (Debian's python3, with
// python3-grpcio) with the built package (lathe_python) on PYTHONPATH.
#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>

#include "absl/strings/match.h"
#include "tests/cluster.h"

namespace lathe::testing {
namespace {

namespace fs = std::filesystem;

// Runs LATHE_PYTHON3 with `args` and the environment a user of `c` sets;
// returns its exit code, with stdout and stderr in `out`.
int Python(const Cluster& c, const std::vector<std::string>& args,
           std::string* out) {
  std::vector<std::string> argv = {
      "/usr/bin/env",
      "PYTHONPATH=" LATHE_PYTHON_PATH,
      "PYTHONDONTWRITEBYTECODE=1",  // no __pycache__ in the source tree
      "PYTHONUNBUFFERED=1",
      "LATHE_SERVER=" + c.address(),
      "LATHE_API_KEY=" + c.api_key(),
      "LATHE_CA_CERT=" + c.certs_dir() + "/ca.pem",
      "LATHE_DEMO_DIR=" + c.demo_dir(),
      "LATHE_TEST_DIR=" + c.root(),
      LATHE_PYTHON3};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, out, absl::Minutes(3));
}

TEST(PythonClientTest, TheJourneyAndTheQuickstartAgainstARealLathed) {
  auto cluster =
      Cluster::Start(TestRoot("python"), 1, {"--max_stream_seconds=2"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;

  std::string out;
  int rc = Python(c,
                  {"-m", "unittest", "discover", "-v", "-s",
                   LATHE_SOURCE_DIR "/clients/python/tests"},
                  &out);
  std::cout << out;
  ASSERT_EQ(rc, 0) << c.Logs();
  // Every test ran: the journey is skipped only without a server.
  EXPECT_TRUE(absl::StrContains(out, "\nOK\n")) << out;
  EXPECT_FALSE(absl::StrContains(out, "skipped")) << out;
  EXPECT_TRUE(absl::StrContains(out, "test_upload_train_watch_download"))
      << out;

  const std::string adapter = c.root() + "/quickstart-adapter";
  rc = Python(c,
              {LATHE_SOURCE_DIR "/clients/python/examples/quickstart.py",
               "--training-file", c.demo_dir() + "/train.jsonl", "--n-epochs",
               "1", "--out", adapter},
              &out);
  std::cout << out;
  ASSERT_EQ(rc, 0) << c.Logs();
  EXPECT_TRUE(absl::StrContains(out, "loss")) << out;
  EXPECT_TRUE(
      absl::StrContains(out, "fine-tuned model ft:lathe-demo:quickstart:"))
      << out;
  EXPECT_TRUE(fs::exists(adapter + "/adapter_model.safetensors"));
  EXPECT_TRUE(fs::exists(adapter + "/adapter_config.json"));
}

}  // namespace
}  // namespace lathe::testing
