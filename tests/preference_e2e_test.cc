// Preference training end to end, with real processes on loopback: upload
// OpenAI-format preference JSONL, create a DPO job through the CLI, let a
// real lathe-worker train it, follow its DPO metrics, download the adapter;
// a paused and resumed DPO job ends with the uninterrupted job's weights;
// files of the wrong kind are refused at creation.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "common/safetensors.h"
#include "common/job_state.h"
#include "common/sha256.h"
#include "tests/cluster.h"
#include "tests/job_history.h"

namespace lathe::testing {
namespace {

// Preference pairs made from the demo's conversations: the demo's answer
// is preferred to the answer of another conversation.
std::string WritePairs(const std::string& demo_dir, const std::string& path,
                       size_t first, size_t count) {
  std::ifstream in(demo_dir + "/train.jsonl");
  std::vector<nlohmann::json> chats;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) chats.push_back(nlohmann::json::parse(line));
  }
  std::ofstream out(path);
  for (size_t i = first; i < first + count; ++i) {
    const nlohmann::json& messages = chats[i % chats.size()]["messages"];
    const nlohmann::json& other = chats[(i + 7) % chats.size()]["messages"];
    nlohmann::json prompt = nlohmann::json::array();
    for (size_t m = 0; m + 1 < messages.size(); ++m) prompt.push_back(messages[m]);
    nlohmann::json line = {{"input", {{"messages", prompt}}},
                           {"preferred_output", {messages.back()}},
                           {"non_preferred_output", {other.back()}}};
    out << line.dump() << "\n";
  }
  return path;
}

class PreferenceEndToEndTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto c = Cluster::Start(TestRoot("e2e-dpo"), 1);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
  }
  static void TearDownTestSuite() { delete cluster_; }

  int Cli(std::vector<std::string> args, std::string* out) {
    std::vector<std::string> argv = {Binaries().cli, "--server", cluster_->address(),
                                     "--api_key", cluster_->api_key()};
    for (const std::string& f : cluster_->CliTlsFlags()) argv.push_back(f);
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, out);
  }

  // Uploads through the client; returns the file.
  v1::File Upload(const std::string& path) {
    auto file = cluster_->client().UploadFile(path, "fine-tune", nullptr);
    EXPECT_TRUE(file.ok()) << file.status();
    return file.ok() ? *file : v1::File();
  }

  // A DPO job over `file`: LoRA r=4, `epochs` of batch 2, checkpoints and
  // validation every 2 steps.
  static v1::CreateJobRequest DpoJob(const std::string& file, const std::string& valid,
                                     int epochs) {
    v1::CreateJobRequest r;
    r.set_model("lathe-demo");
    r.set_training_file(file);
    r.set_validation_file(valid);
    r.set_seed(11);
    r.mutable_method()->set_type("dpo");
    auto* hp = r.mutable_method()->mutable_dpo()->mutable_hyperparameters();
    hp->set_beta(0.1);
    hp->set_n_epochs(epochs);
    hp->set_batch_size(2);
    hp->set_learning_rate_multiplier(5);
    hp->set_checkpoint_every_steps(2);
    hp->set_eval_every_steps(2);
    r.mutable_lora()->set_rank(4);
    return r;
  }

  static Cluster* cluster_;
};
Cluster* PreferenceEndToEndTest::cluster_ = nullptr;

TEST_F(PreferenceEndToEndTest, ADpoJobTrainsStreamsItsMetricsAndDownloads) {
  Cluster& c = *cluster_;
  const std::string train =
      WritePairs(c.demo_dir(), c.root() + "/pairs.jsonl", 0, 16);
  const std::string valid =
      WritePairs(c.demo_dir(), c.root() + "/valid-pairs.jsonl", 40, 6);
  std::string out;
  ASSERT_EQ(Cli({"files", "upload", train, "-o", "json"}, &out), 0) << out;
  const auto uploaded = nlohmann::json::parse(out.substr(out.find('{')));
  EXPECT_EQ(uploaded["format"], "preference");
  const std::string file_id = uploaded["id"];
  const v1::File valid_file = Upload(valid);

  ASSERT_EQ(Cli({"jobs", "create", "--model", "lathe-demo", "--training-file", file_id,
                 "--validation-file", valid_file.id(), "--method", "dpo", "--beta",
                 "0.2", "--rpo-alpha", "0.5", "--n-epochs", "3", "--batch-size", "4",
                 "--learning-rate-multiplier", "5", "--eval-every-steps", "2",
                 "--checkpoint-every-steps", "2", "--lora-rank", "4", "-o", "json"},
                &out),
            0)
      << out;
  const std::string id = nlohmann::json::parse(out.substr(out.find('{')))["id"];
  ASSERT_EQ(Cli({"jobs", "get", id}, &out), 0) << out;
  for (const char* shown :
       {"method:           dpo", "beta=0.2 loss_type=sigmoid label_smoothing=0 rpo_alpha=0.5",
        "max_prompt_len=256"}) {
    EXPECT_NE(out.find(shown), std::string::npos) << shown << " not in:\n" << out;
  }
  ASSERT_EQ(Cli({"jobs", "wait", id, "--timeout", "300"}, &out), 0) << out << c.Logs();
  auto job = c.client().GetJob(id);
  ASSERT_TRUE(job.ok());
  ASSERT_EQ(job->status(), v1::JOB_STATUS_SUCCEEDED) << job->error().message() << c.Logs();
  EXPECT_EQ(job->progress().steps_total(), 12);  // 16 pairs / 4, 3 epochs

  // Every metrics event carries DPO's figures; validation steps theirs.
  int metrics = 0, validated = 0;
  double first_margin = 0, last_margin = 0;
  for (const v1::JobEvent& e : AllEvents(c.client(), id)) {
    if (e.type() != "metrics") continue;
    const auto& v = e.metrics().values();
    for (const char* name : {"rewards/chosen", "rewards/rejected", "rewards/accuracies",
                             "rewards/margins", "logps/chosen", "logps/rejected",
                             "nll_loss"}) {
      EXPECT_TRUE(v.contains(name)) << name << " missing at step " << e.metrics().step();
    }
    if (metrics++ == 0) {
      EXPECT_NEAR(v.at("rewards/margins"), 0.0, 1e-9);  // B = 0 at step 1
      first_margin = v.at("rewards/margins");
    }
    last_margin = v.contains("rewards/margins") ? v.at("rewards/margins") : 0;
    if (v.contains("valid_rewards/accuracies")) {
      ++validated;
      EXPECT_TRUE(v.contains("valid_loss"));
    }
  }
  EXPECT_EQ(metrics, 12);
  EXPECT_EQ(validated, 6);
  EXPECT_GT(last_margin, first_margin);
  // Checkpoints' metrics include the validation preference accuracy.
  auto checkpoints = c.client().ListJobCheckpoints(id);
  ASSERT_TRUE(checkpoints.ok());
  ASSERT_GE(checkpoints->data_size(), 1);
  for (const auto& ck : checkpoints->data()) {
    EXPECT_TRUE(ck.metrics().values().contains("valid_rewards/accuracies"))
        << "step " << ck.step_number();
    EXPECT_TRUE(ck.metrics().has_valid_loss());
  }

  const std::string dir = c.root() + "/dpo-adapter";
  ASSERT_EQ(Cli({"jobs", "download", id, "--out", dir}, &out), 0) << out;
  auto header = safetensors::ReadHeaderFile(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_FALSE(header->tensors.empty());
  const auto config = nlohmann::json::parse(ReadFileOrEmpty(dir + "/adapter_config.json"));
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["r"], 4);
}

TEST_F(PreferenceEndToEndTest, APausedAndResumedDpoJobEndsWithTheUninterruptedWeights) {
  Cluster& c = *cluster_;
  const v1::File file =
      Upload(WritePairs(c.demo_dir(), c.root() + "/resume-pairs.jsonl", 0, 40));
  const v1::File valid =
      Upload(WritePairs(c.demo_dir(), c.root() + "/resume-valid.jsonl", 50, 4));
  // 40 pairs / 2 = 20 steps an epoch.
  auto whole = c.client().CreateJob(DpoJob(file.id(), valid.id(), 8));
  ASSERT_TRUE(whole.ok()) << whole.status();
  auto whole_done = WaitForJob(c.client(), whole->id(),
                               [](const v1::Job& j) { return IsTerminal(j.status()); },
                               absl::Minutes(4));
  ASSERT_TRUE(whole_done.ok()) << c.Logs();
  ASSERT_EQ(whole_done->status(), v1::JOB_STATUS_SUCCEEDED) << c.Logs();

  auto job = c.client().CreateJob(DpoJob(file.id(), valid.id(), 8));
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_TRUE(WaitForJob(c.client(), job->id(), [](const v1::Job& j) {
                return j.progress().steps_done() >= 10;
              }).ok())
      << c.Logs();
  auto paused = c.client().PauseJob(job->id());
  ASSERT_TRUE(paused.ok()) << paused.status() << " (the job ran to its end first?)";
  // Resume once the pause checkpoint is in (resume_requested waits for it).
  ASSERT_TRUE(c.client().ResumeJob(job->id()).ok());
  auto done = WaitForJob(c.client(), job->id(),
                         [](const v1::Job& j) { return IsTerminal(j.status()); },
                         absl::Minutes(4));
  ASSERT_TRUE(done.ok()) << c.Logs();
  ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << done->error().message() << c.Logs();
  const std::vector<AttemptHistory> attempts = Attempts(AllEvents(c.client(), job->id()));
  ASSERT_EQ(attempts.size(), 2u) << c.Logs();
  EXPECT_GT(attempts[1].resumed_from, 0);

  auto sha_of = [&](const v1::Job& j) {
    for (const auto& f : j.result_files()) {
      if (f.name() == "adapter_model.safetensors") return f.sha256();
    }
    return std::string();
  };
  EXPECT_FALSE(sha_of(*done).empty());
  EXPECT_EQ(sha_of(*done), sha_of(*whole_done));
}

TEST_F(PreferenceEndToEndTest, FilesOfTheWrongKindAreRefusedAtCreation) {
  Cluster& c = *cluster_;
  const v1::File chat = Upload(c.demo_dir() + "/train.jsonl");
  const v1::File pairs =
      Upload(WritePairs(c.demo_dir(), c.root() + "/refuse-pairs.jsonl", 0, 4));
  auto before = c.client().ListJobs(v1::ListJobsRequest());
  ASSERT_TRUE(before.ok());

  auto dpo_on_chat = c.client().CreateJob(DpoJob(chat.id(), "", 1));
  EXPECT_EQ(dpo_on_chat.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(dpo_on_chat.status().message(),
                               "training_file: " + chat.id() + " holds chat data"))
      << dpo_on_chat.status();
  auto dpo_chat_valid = c.client().CreateJob(DpoJob(pairs.id(), chat.id(), 1));
  EXPECT_TRUE(absl::StartsWith(dpo_chat_valid.status().message(), "validation_file: "))
      << dpo_chat_valid.status();
  v1::CreateJobRequest sft;
  sft.set_model("lathe-demo");
  sft.set_training_file(pairs.id());
  auto sft_on_pairs = c.client().CreateJob(sft);
  EXPECT_EQ(sft_on_pairs.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(sft_on_pairs.status().message(), "holds preference data"))
      << sft_on_pairs.status();
  v1::CreateJobRequest bad_beta = DpoJob(pairs.id(), "", 1);
  bad_beta.mutable_method()->mutable_dpo()->mutable_hyperparameters()->set_beta(3);
  EXPECT_TRUE(absl::StartsWith(c.client().CreateJob(bad_beta).status().message(),
                               "method.dpo.hyperparameters.beta"));
  // Nothing was stored.
  auto after = c.client().ListJobs(v1::ListJobsRequest());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->data_size(), before->data_size());

  // A bad preference line is refused at upload naming line and field.
  const std::string bad = c.root() + "/bad-pairs.jsonl";
  std::ofstream(bad) << R"({"input":{"messages":[{"role":"user","content":"q"}]},)"
                     << R"("preferred_output":[{"role":"assistant","content":"a"}],)"
                     << R"("non_preferred_output":[{"role":"user","content":"b"}]})"
                     << "\n";
  auto refused = c.client().UploadFile(bad, "fine-tune", nullptr);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(refused.status().message(),
                                "line 1: non_preferred_output[0].role"))
      << refused.status();
}

}  // namespace
}  // namespace lathe::testing
