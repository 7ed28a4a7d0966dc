// The HTTP port end to end, with real processes on loopback: lathed with
// --http_listen over TLS and a real worker. OpenAI's own Node SDK (the npm
// `openai` package, unchanged) drives every REST path
// (web/tests/openai_sdk.test.mjs); this test then checks that the same
// jobs are visible through gRPC. /metrics and the health endpoints are
// scraped here.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "tests/cluster.h"

namespace lathe::testing {
namespace {

namespace fs = std::filesystem;

// `curl` against the HTTP port, trusting the cluster's CA: the body, and the
// status in *status.
std::string Curl(Cluster& c, const std::string& path, int* status,
                 const std::string& key = "") {
  std::vector<std::string> argv = {"curl", "-sS", "-o",
                                   "-",    "-w",  "\n%{http_code}"};
  if (!c.insecure())
    argv.insert(argv.end(), {"--cacert", c.certs_dir() + "/ca.pem"});
  if (!key.empty())
    argv.insert(argv.end(), {"-H", "Authorization: Bearer " + key});
  argv.push_back(c.http_url() + path);
  std::string out;
  int rc = RunCommand(argv, &out, absl::Seconds(30));
  EXPECT_EQ(rc, 0) << out;
  size_t nl = out.rfind('\n');
  *status = nl == std::string::npos ? 0 : std::atoi(out.c_str() + nl + 1);
  return nl == std::string::npos ? out : out.substr(0, nl);
}

// The samples of a Prometheus text exposition, "name{labels}" -> value;
// fails the test on a line that is not a comment or a sample.
std::map<std::string, double> ParseExposition(const std::string& text) {
  static const std::regex kSample(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$)");
  std::map<std::string, double> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      EXPECT_TRUE(line.rfind("# HELP ", 0) == 0 ||
                  line.rfind("# TYPE ", 0) == 0)
          << line;
      continue;
    }
    std::smatch m;
    if (!std::regex_match(line, m, kSample)) {
      ADD_FAILURE() << "not a sample: " << line;
      continue;
    }
    std::string v = m[3];
    out[m[1].str() + m[2].str()] = v == "+Inf"   ? INFINITY
                                   : v == "-Inf" ? -INFINITY
                                                 : std::stod(v);
  }
  return out;
}

double Sum(const std::map<std::string, double>& samples,
           const std::string& prefix, const std::string& must_contain = "") {
  double s = 0;
  for (const auto& [k, v] : samples) {
    if (k.rfind(prefix, 0) == 0 &&
        (must_contain.empty() || k.find(must_contain) != std::string::npos)) {
      s += v;
    }
  }
  return s;
}

TEST(HttpGatewayTest, OpenAiSdkDrivesEveryPathAndGrpcSeesTheSameJobs) {
  auto cluster =
      Cluster::Start(TestRoot("http-sdk"), 1, {"--http_listen=127.0.0.1:0"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  ASSERT_GT(c.http_port(), 0) << c.Logs();

  int status = 0;
  EXPECT_EQ(Curl(c, "/healthz", &status), "ok\n");
  EXPECT_EQ(status, 200);
  Curl(c, "/readyz", &status);
  EXPECT_EQ(status, 200);
  // Scraped until the worker has joined.
  std::map<std::string, double> before;
  for (int i = 0; i < 100; ++i) {
    before = ParseExposition(Curl(c, "/metrics", &status));
    ASSERT_EQ(status, 200);
    if (Sum(before, "lathe_workers{", "state=\"idle\"") == 1) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_EQ(Sum(before, "lathe_workers{", "state=\"idle\""), 1);
  EXPECT_GT(Sum(before, "lathe_worker_device_memory_bytes{"), 0);
  EXPECT_EQ(Sum(before, "lathe_jobs{"), 0);

  const std::string work = c.root() + "/node";
  fs::create_directories(work);
  const std::string result_path = work + "/result.json";
  std::vector<std::string> argv = {
      "env",
      "LATHE_HTTP_URL=" + c.http_url(),
      "LATHE_API_KEY=" + c.api_key(),
      "LATHE_OTHER_KEY=" + c.NewKey("other"),
      "LATHE_DEMO_DIR=" + c.demo_dir(),
      "LATHE_WORK_DIR=" + work,
      "LATHE_RESULT=" + result_path,
      "NODE_EXTRA_CA_CERTS=" + c.certs_dir() + "/ca.pem",
      LATHE_NODE_BIN,
      "--test",
      "--test-reporter=spec",
      std::string(LATHE_SOURCE_DIR) + "/web/tests/openai_sdk.test.mjs"};
  std::string out;
  int rc = RunCommand(argv, &out, absl::Minutes(8));
  ASSERT_EQ(rc, 0) << out << c.Logs();
  std::cout << out;
  auto result = nlohmann::json::parse(ReadFileOrEmpty(result_path));

  // The same jobs through gRPC.
  auto sft = c.client().GetJob(result["supervised"].get<std::string>());
  ASSERT_TRUE(sft.ok()) << sft.status();
  EXPECT_EQ(sft->status(), v1::JOB_STATUS_SUCCEEDED);
  EXPECT_EQ(sft->fine_tuned_model(),
            result["fine_tuned_model"].get<std::string>());
  EXPECT_EQ(sft->metadata().at("team"), "a");
  EXPECT_EQ(sft->lora().rank(), 4);  // the extension key reached the job
  EXPECT_EQ(sft->progress().steps_total(), result["steps"].get<int64_t>());
  auto dpo = c.client().GetJob(result["dpo"].get<std::string>());
  ASSERT_TRUE(dpo.ok());
  EXPECT_EQ(dpo->method().type(), "dpo");
  EXPECT_EQ(dpo->status(), v1::JOB_STATUS_SUCCEEDED);
  EXPECT_EQ(dpo->fine_tuned_model(), "");  // deleted through REST
  auto gone = c.client().GetModel(result["deleted_model"].get<std::string>());
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
  auto cancelled = c.client().GetJob(result["cancelled"].get<std::string>());
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->status(), v1::JOB_STATUS_CANCELLED);

  // The counters moved with the jobs.
  auto after = ParseExposition(Curl(c, "/metrics", &status));
  EXPECT_EQ(Sum(after, "lathe_jobs{", "status=\"succeeded\""), 2);
  EXPECT_EQ(Sum(after, "lathe_jobs{", "status=\"cancelled\""), 1);
  EXPECT_GT(Sum(after, "lathe_http_requests_total{",
                "route=\"POST /v1/fine_tuning/jobs\",status=\"200\""),
            0);
  EXPECT_GT(Sum(after, "lathe_http_requests_total{", "status=\"404\""), 0);
  EXPECT_GT(Sum(after, "lathe_rpc_requests_total{", "/lathe.v1.Worker/"), 0);
  EXPECT_GT(
      Sum(after, "lathe_rpc_requests_total{", "/lathe.v1.FineTuning/GetJob"),
      0);
  EXPECT_GT(Sum(after, "lathe_sqlite_commit_seconds_count"),
            Sum(before, "lathe_sqlite_commit_seconds_count"));
  EXPECT_GT(Sum(after, "lathe_blob_store_bytes"), 0);
  EXPECT_EQ(Sum(after, "lathe_queue_depth{"), 0);
}

// The dashboard in headless Chromium (web/tests/dashboard.test.mjs), over
// plaintext loopback; its screenshots are kept in
// <build>/tests/artifacts/dashboard.
TEST(HttpGatewayTest, DashboardInHeadlessChromium) {
  auto cluster = Cluster::Start(TestRoot("http-dash"), 1,
                                {"--insecure", "--http_listen=127.0.0.1:0"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  ASSERT_GT(c.http_port(), 0) << c.Logs();
  const std::string artifacts = std::string(LATHE_ARTIFACTS_DIR) + "/dashboard";
  fs::remove_all(artifacts);
  std::vector<std::string> argv = {
      "env",
      "LATHE_HTTP_URL=" + c.http_url(),
      "LATHE_API_KEY=" + c.api_key(),
      "LATHE_DEMO_DIR=" + c.demo_dir(),
      "LATHE_ARTIFACTS=" + artifacts,
      "CHROMIUM=" LATHE_CHROMIUM_BIN,
      LATHE_NODE_BIN,
      "--test",
      "--test-reporter=spec",
      std::string(LATHE_SOURCE_DIR) + "/web/tests/dashboard.test.mjs"};
  std::string out;
  int rc = RunCommand(argv, &out, absl::Minutes(8));
  ASSERT_EQ(rc, 0) << out << c.Logs();
  std::cout << out;
  for (const char* shot :
       {"jobs.png", "job.png", "models.png", "job-phone.png"}) {
    EXPECT_GT(fs::file_size(artifacts + "/" + shot), 10000u) << shot;
  }
}

}  // namespace
}  // namespace lathe::testing
