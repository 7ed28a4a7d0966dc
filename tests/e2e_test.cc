// End to end, with real processes on loopback: upload a chat dataset through
// the CLI, create a LoRA job, let a real lathe-worker train it with LibTorch,
// follow its events, download the adapter and check it.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "tests/cluster.h"

namespace lathe::testing {
namespace {

namespace fs = std::filesystem;

TEST(EndToEndTest, UploadTrainWatchDownload) {
  auto cluster = Cluster::Start(TestRoot("e2e-main"), 1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;

  // Upload through the CLI, as a user would.
  std::string out;
  std::vector<std::string> upload = {Binaries().cli, "--server", c.address(), "--api_key",
                                     c.api_key(), "files", "upload",
                                     c.demo_dir() + "/train.jsonl", "-o", "json"};
  for (const std::string& f : c.CliTlsFlags()) upload.push_back(f);
  int rc = RunCommand(upload, &out);
  ASSERT_EQ(rc, 0) << out << c.Logs();
  auto json_start = out.find('{');
  ASSERT_NE(json_start, std::string::npos) << out;
  auto uploaded = nlohmann::json::parse(out.substr(json_start));
  std::string file_id = uploaded["id"];
  EXPECT_EQ(uploaded["sha256"], *Sha256File(c.demo_dir() + "/train.jsonl"));

  v1::CreateJobRequest req;
  req.set_model("lathe-demo");
  req.set_training_file(file_id);
  req.set_suffix("e2e");
  req.set_seed(7);
  auto* hp = req.mutable_method()->mutable_supervised()->mutable_hyperparameters();
  hp->set_n_epochs(2);
  hp->set_batch_size(4);
  req.mutable_lora()->set_rank(4);
  auto job = c.client().CreateJob(req);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->status(), v1::JOB_STATUS_QUEUED);

  std::vector<double> losses;
  std::vector<v1::JobStatus> statuses;
  std::string last_event;
  auto st = c.client().WatchJob(
      job->id(), "",
      [&](const v1::WatchJobResponse& u) {
        EXPECT_NE(u.event().id(), last_event);
        last_event = u.event().id();
        if (u.event().type() == "metrics") {
          losses.push_back(u.event().metrics().train_loss());
        }
        if (u.has_job()) statuses.push_back(u.job().status());
      },
      absl::Now() + absl::Minutes(5));
  ASSERT_TRUE(st.ok()) << st << c.Logs();

  auto done = c.client().GetJob(job->id());
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED)
      << done->error().message() << c.Logs();
  EXPECT_EQ(done->fine_tuned_model().rfind("ft:lathe-demo:e2e:", 0), 0u);
  EXPECT_GT(done->trained_tokens(), 0);
  ASSERT_GE(losses.size(), 10u);
  EXPECT_EQ(static_cast<int64_t>(losses.size()), done->progress().steps_total());
  EXPECT_LT(losses.back(), losses.front());
  ASSERT_GE(statuses.size(), 3u);
  EXPECT_EQ(statuses.front(), v1::JOB_STATUS_QUEUED);
  EXPECT_EQ(statuses.back(), v1::JOB_STATUS_SUCCEEDED);

  std::string adapter_dir = c.root() + "/adapter";
  fs::remove_all(adapter_dir);
  auto files = c.client().DownloadAdapter(job->id(), adapter_dir, nullptr);
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_EQ(files->size(), 2u);
  for (const auto& f : done->result_files()) {
    EXPECT_EQ(*Sha256File(adapter_dir + "/" + f.name()), f.sha256()) << f.name();
  }

  auto header = safetensors::ReadHeaderFile(adapter_dir + "/adapter_model.safetensors");
  ASSERT_TRUE(header.ok()) << header.status();
  int a = 0, b = 0;
  for (const auto& t : header->tensors) {
    EXPECT_EQ(t.name.rfind("base_model.model.", 0), 0u) << t.name;
    if (t.name.find(".lora_A.weight") != std::string::npos) {
      ++a;
      EXPECT_EQ(t.shape[0], 4) << t.name;  // [r, in]
    }
    if (t.name.find(".lora_B.weight") != std::string::npos) {
      ++b;
      EXPECT_EQ(t.shape[1], 4) << t.name;  // [out, r]
    }
  }
  EXPECT_GT(a, 0);
  EXPECT_EQ(a, b);
  auto config = nlohmann::json::parse(
      ReadFileOrEmpty(adapter_dir + "/adapter_config.json"));
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["r"], 4);
}

TEST(EndToEndTest, CancelARunningJob) {
  auto cluster = Cluster::Start(TestRoot("e2e-cancel"), 2);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  v1::CreateJobRequest req;
  req.set_model("lathe-demo");
  req.set_training_file(file->id());
  req.mutable_method()->mutable_supervised()->mutable_hyperparameters()->set_n_epochs(50);
  auto job = c.client().CreateJob(req);
  ASSERT_TRUE(job.ok()) << job.status();

  // Cancel once the first metrics arrive: the job is really running.
  bool cancelled = false;
  auto st = c.client().WatchJob(
      job->id(), "",
      [&](const v1::WatchJobResponse& u) {
        if (u.event().type() == "metrics" && !cancelled) {
          cancelled = true;
          auto r = c.client().CancelJob(job->id());
          EXPECT_TRUE(r.ok()) << r.status();
          EXPECT_EQ(r->status(), v1::JOB_STATUS_CANCELLING);
        }
      },
      absl::Now() + absl::Minutes(3));
  ASSERT_TRUE(st.ok()) << st << c.Logs();
  EXPECT_TRUE(cancelled);
  auto end = c.client().GetJob(job->id());
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->status(), v1::JOB_STATUS_CANCELLED) << c.Logs();
  EXPECT_LT(end->progress().steps_done(), end->progress().steps_total());
  // Cancelling again is refused: the job has finished.
  EXPECT_TRUE(absl::IsFailedPrecondition(c.client().CancelJob(job->id()).status()));
}

TEST(EndToEndTest, BadUploadIsRefusedAndNothingStored) {
  auto cluster = Cluster::Start(TestRoot("e2e-bad"), 0);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  std::string bad = c.root() + "/bad.jsonl";
  {
    std::ofstream f(bad);
    f << R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]})"
      << "\n"
      << R"({"messages":[{"role":"user","content":"q"},{"role":"robot","content":"a"}]})"
      << "\n";
  }
  auto file = c.client().UploadFile(bad, "fine-tune", nullptr);
  ASSERT_TRUE(absl::IsInvalidArgument(file.status())) << file.status();
  EXPECT_NE(file.status().message().find("line 2: messages[1].role"),
            absl::string_view::npos)
      << file.status();
  auto list = c.client().ListFiles({});
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->data_size(), 0);
  EXPECT_TRUE(fs::is_empty(c.root() + "/data/tmp"));
  EXPECT_TRUE(fs::is_empty(c.root() + "/data/blobs"));

  v1::CreateJobRequest req;
  req.set_model("no-such-model");
  req.set_training_file("file-x");
  auto job = c.client().CreateJob(req);
  EXPECT_TRUE(absl::IsNotFound(job.status())) << job.status();
  EXPECT_NE(job.status().message().find("model"), absl::string_view::npos);
}

}  // namespace
}  // namespace lathe::testing

namespace lathe::testing {
namespace {

// Runs the CLI against `c` as the default project's user; returns its exit
// code, with stdout and stderr in `out`.
int Cli(Cluster& c, std::vector<std::string> args, std::string* out) {
  std::vector<std::string> argv = {Binaries().cli, "--server", c.address(), "--api_key",
                                   c.api_key()};
  for (const std::string& f : c.CliTlsFlags()) argv.push_back(f);
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, out);
}

// Uploads the demo's training file in two parts (lines 0-47 and 48-79);
// returns their file ids.
std::pair<std::string, std::string> UploadDemoHalves(Cluster& c) {
  std::ifstream in(c.demo_dir() + "/train.jsonl");
  std::ofstream a(c.root() + "/a.jsonl"), b(c.root() + "/b.jsonl");
  int line_number = 0;
  for (std::string line; std::getline(in, line); ++line_number) {
    (line_number < 48 ? a : b) << line << "\n";
  }
  a.close();
  b.close();
  std::pair<std::string, std::string> ids;
  for (auto [path, id] : {std::pair{c.root() + "/a.jsonl", &ids.first},
                          std::pair{c.root() + "/b.jsonl", &ids.second}}) {
    auto f = c.client().UploadFile(path, "fine-tune", nullptr);
    EXPECT_TRUE(f.ok()) << f.status();
    if (f.ok()) *id = f->id();
  }
  return ids;
}

// The options the public API adds beyond OpenAI's, set through the CLI,
// reach the engine: full fine-tuning with warmup, a cosine schedule,
// gradient accumulation and a sequence cap; `lathe jobs get` shows them
// resolved, the learning rates of the steps follow them, and the result is
// a whole model.
TEST(EndToEndTest, FullFineTuningWithScheduleOptionsThroughTheCli) {
  auto cluster = Cluster::Start(TestRoot("e2e-full"), 1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();

  std::string out;
  ASSERT_EQ(Cli(c,
                {"jobs", "create", "--model", "lathe-demo", "--training-file", file->id(),
                 "--method", "full", "--n-epochs", "1", "--batch-size", "2",
                 "--gradient-accumulation-steps", "2", "--warmup-steps", "2",
                 "--lr-scheduler", "cosine", "--max-seq-len", "96", "--weight-decay", "0.01",
                 "-o", "json"},
                &out),
            0)
      << out;
  auto created = nlohmann::json::parse(out.substr(out.find('{')));
  const std::string id = created["id"];
  ASSERT_EQ(Cli(c, {"jobs", "get", id}, &out), 0) << out;
  for (const char* shown :
       {"adapter:          full", "warmup_steps=2", "lr_scheduler=cosine",
        "gradient_accumulation_steps=2", "max_seq_len=96", "weight_decay=0.01"}) {
    EXPECT_NE(out.find(shown), std::string::npos) << shown << " not in:\n" << out;
  }
  ASSERT_EQ(Cli(c, {"jobs", "wait", id, "--timeout", "300"}, &out), 0) << out << c.Logs();

  auto job = c.client().GetJob(id);
  ASSERT_TRUE(job.ok());
  const auto& hp = job->method().supervised().hyperparameters();
  const int64_t examples = file->line_count();
  EXPECT_EQ(job->progress().steps_total(), (examples + 3) / 4);  // batch 2 x 2 micro-batches
  std::vector<double> rates;
  v1::ListJobEventsRequest r;
  r.set_job_id(id);
  r.set_limit(1000);
  auto events = c.client().ListJobEvents(r);
  ASSERT_TRUE(events.ok());
  for (const auto& e : events->data()) {
    if (e.type() == "metrics") rates.push_back(e.metrics().learning_rate());
  }
  ASSERT_GE(rates.size(), 4u);
  // Warmup over two steps, then the cosine from the peak.
  EXPECT_DOUBLE_EQ(rates[0], 0);
  EXPECT_NEAR(rates[1], hp.learning_rate() / 2, 1e-12);
  EXPECT_NEAR(rates[2], hp.learning_rate(), 1e-12);
  EXPECT_LT(rates.back(), rates[2]);

  // The result is a whole model folder, not an adapter.
  std::string dir = c.root() + "/full-model";
  ASSERT_EQ(Cli(c, {"jobs", "download", id, "--out", dir}, &out), 0) << out;
  EXPECT_TRUE(fs::exists(dir + "/config.json"));
  EXPECT_FALSE(fs::exists(dir + "/adapter_config.json"));
  auto header = safetensors::ReadHeaderFile(dir + "/model.safetensors");
  ASSERT_TRUE(header.ok()) << header.status();
  bool has_layer = false;
  for (const auto& t : header->tensors) {
    has_layer = has_layer || t.name == "model.layers.0.self_attn.q_proj.weight";
  }
  EXPECT_TRUE(has_layer);
}

// Prompt tuning through the CLI: the job trains virtual tokens only and
// downloads as PEFT's PROMPT_TUNING adapter.
TEST(EndToEndTest, PromptTuningThroughTheCliDownloadsPeftsLayout) {
  auto cluster = Cluster::Start(TestRoot("e2e-prompt"), 1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<std::string> base = {Binaries().cli, "--server", c.address(), "--api_key",
                                   c.api_key()};
  for (const std::string& f : c.CliTlsFlags()) base.push_back(f);
  auto cli = [&](std::vector<std::string> args, std::string* out) {
    std::vector<std::string> argv = base;
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, out);
  };
  std::string out;
  ASSERT_EQ(cli({"jobs", "create", "--model", "lathe-demo", "--training-file", file->id(),
                 "--method", "prompt_tuning", "--num-virtual-tokens", "8", "--prompt-init",
                 "text", "--prompt-init-text", "Answer briefly:", "--n-epochs", "1",
                 "--batch-size", "4", "--learning-rate-multiplier", "100", "-o", "json"},
                &out),
            0)
      << out;
  const std::string id = nlohmann::json::parse(out.substr(out.find('{')))["id"];
  ASSERT_EQ(cli({"jobs", "get", id}, &out), 0) << out;
  EXPECT_NE(out.find("method:           prompt_tuning"), std::string::npos) << out;
  EXPECT_NE(out.find("adapter:          prompt tuning, num_virtual_tokens=8 init=text "
                     "init_text=\"Answer briefly:\""),
            std::string::npos)
      << out;
  ASSERT_EQ(cli({"jobs", "wait", id, "--timeout", "300"}, &out), 0) << out << c.Logs();
  const std::string dir = c.root() + "/prompt";
  ASSERT_EQ(cli({"jobs", "download", id, "--out", dir}, &out), 0) << out;
  auto header = safetensors::ReadHeaderFile(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(header.ok()) << header.status();
  ASSERT_EQ(header->tensors.size(), 1u);
  EXPECT_EQ(header->tensors[0].name, "prompt_embeddings");
  EXPECT_EQ(header->tensors[0].shape, (std::vector<int64_t>{8, 64}));
  const auto config = nlohmann::json::parse(ReadFileOrEmpty(dir + "/adapter_config.json"));
  EXPECT_EQ(config["peft_type"], "PROMPT_TUNING");
  EXPECT_EQ(config["num_virtual_tokens"], 8);
  EXPECT_EQ(config["prompt_tuning_init"], "TEXT");
  EXPECT_EQ(config["prompt_tuning_init_text"], "Answer briefly:");
}

// S²FT (METHODS.md §6.1) through the CLI, lathed and a worker: the job
// shows its resolved selection; its download is the merged model folder
// with the sparse diff beside it, and `lathe-worker s2ft-apply` of that
// diff to the base gives a model that scores exactly as the merged one.
TEST(EndToEndTest, S2ftJobDownloadsTheMergedModelAndADiffThatApplies) {
  auto cluster = Cluster::Start(TestRoot("e2e-s2ft"), 1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  std::string out;
  ASSERT_EQ(Cli(c,
                {"jobs", "create", "--model", "lathe-demo", "--training-file", file->id(),
                 "--adapter", "s2ft", "--s2ft-d-ratio", "0.05", "--s2ft-o-ratio", "0.25",
                 "--s2ft-seed", "3", "--n-epochs", "1", "--batch-size", "4",
                 "--learning-rate-multiplier", "10", "-o", "json"},
                &out),
            0)
      << out;
  const std::string id = nlohmann::json::parse(out.substr(out.find('{')))["id"];
  ASSERT_EQ(Cli(c, {"jobs", "get", id}, &out), 0) << out;
  EXPECT_NE(out.find("adapter:          s2ft d_ratio=0.05 u_ratio=0 o_ratio=0.25 v_ratio=0 seed=3"),
            std::string::npos)
      << out;
  ASSERT_EQ(Cli(c, {"jobs", "wait", id, "--timeout", "300"}, &out), 0) << out << c.Logs();

  const std::string dir = c.root() + "/s2ft";
  ASSERT_EQ(Cli(c, {"jobs", "download", id, "--out", dir}, &out), 0) << out;
  for (const char* name : {"config.json", "model.safetensors", "s2ft_config.json",
                           "s2ft_model.safetensors"}) {
    EXPECT_TRUE(fs::exists(dir + "/" + name)) << name;
  }
  // The diff is a small part of the model: int(2 x 160 x 0.05) = 16
  // down_proj columns and int(2 x 4 x 0.25) = 2 heads' o_proj columns.
  const auto config = nlohmann::json::parse(ReadFileOrEmpty(dir + "/s2ft_config.json"));
  EXPECT_EQ(config["format"], "lathe-s2ft");
  EXPECT_EQ(config["seed"], 3);
  EXPECT_EQ(config["trainable_parameters"], (16 + 2 * 16) * 64);
  EXPECT_LT(fs::file_size(dir + "/s2ft_model.safetensors") * 10,
            fs::file_size(dir + "/model.safetensors"));

  const std::string applied = c.root() + "/s2ft-applied";
  ASSERT_EQ(RunCommand({Binaries().worker, "s2ft-apply", "--model", c.demo_dir() + "/model",
                        "--diff", dir, "--out", applied},
                       &out),
            0)
      << out;
  std::string merged_scores, applied_scores, base_scores;
  for (auto [model, scores] : {std::pair{dir, &merged_scores},
                               std::pair{applied, &applied_scores},
                               std::pair{c.demo_dir() + "/model", &base_scores}}) {
    ASSERT_EQ(RunCommand({Binaries().worker, "score", "--model", model, "--data",
                          c.demo_dir() + "/valid.jsonl", "-o", "json"},
                         scores),
              0)
        << *scores;
  }
  EXPECT_NE(merged_scores.find("\"loss\""), std::string::npos) << merged_scores;
  EXPECT_EQ(applied_scores, merged_scores);
  EXPECT_NE(base_scores, merged_scores);  // it trained
}

// LISA full fine-tuning (METHODS.md §4.2) through the CLI, lathed and a
// worker: lathed refuses what does not fit, the job shows its resolved
// selection, streams metrics, and its download holds the draws; a layer
// never drawn is the base's, bit for bit.
TEST(EndToEndTest, LisaFullFineTuningThroughTheCli) {
  auto cluster = Cluster::Start(TestRoot("e2e-lisa"), 1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/train.jsonl", "fine-tune",
                                    nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  const std::vector<std::string> create = {
      "jobs", "create", "--model", "lathe-demo", "--training-file", file->id()};
  std::string out;
  // The demo model has 2 layers; LISA is for full fine-tuning.
  std::vector<std::string> too_many = create;
  too_many.insert(too_many.end(), {"--method", "full", "--lisa-layers", "3"});
  EXPECT_NE(Cli(c, too_many, &out), 0);
  EXPECT_NE(out.find("trainable.lisa.activated_layers"), std::string::npos)
      << out;
  std::vector<std::string> with_lora = create;
  with_lora.insert(with_lora.end(), {"--lisa-layers", "1"});
  EXPECT_NE(Cli(c, with_lora, &out), 0);
  EXPECT_NE(out.find("trainable.lisa"), std::string::npos) << out;

  std::vector<std::string> lisa = create;
  lisa.insert(lisa.end(),
              {"--method", "full", "--lisa-layers", "1", "--lisa-interval", "2",
               "--n-epochs", "1", "--batch-size", "8", "--max-seq-len", "96",
               "--seed", "3", "-o", "json"});
  ASSERT_EQ(Cli(c, lisa, &out), 0) << out;
  const std::string id = nlohmann::json::parse(out.substr(out.find('{')))["id"];
  ASSERT_EQ(Cli(c, {"jobs", "get", id}, &out), 0) << out;
  EXPECT_NE(
      out.find("trainable:        lisa activated_layers=1 interval_steps=2"),
      std::string::npos)
      << out;
  ASSERT_EQ(Cli(c, {"jobs", "wait", id, "--timeout", "300"}, &out), 0)
      << out << c.Logs();

  v1::ListJobEventsRequest r;
  r.set_job_id(id);
  r.set_limit(1000);
  auto events = c.client().ListJobEvents(r);
  ASSERT_TRUE(events.ok());
  int metrics = 0;
  for (const auto& e : events->data()) metrics += e.type() == "metrics";
  EXPECT_EQ(metrics, (file->line_count() + 7) / 8);

  const std::string dir = c.root() + "/lisa-model";
  ASSERT_EQ(Cli(c, {"jobs", "download", id, "--out", dir}, &out), 0) << out;
  std::ifstream manifest_file(dir + "/trainable_selection.json");
  ASSERT_TRUE(manifest_file.good());
  const nlohmann::json manifest = nlohmann::json::parse(manifest_file);
  ASSERT_EQ(manifest["kind"], "lisa");
  std::set<int> drawn;
  for (const auto& draw : manifest["draws"]) {
    EXPECT_EQ(draw["step"].get<int>() % 2, 0);
    drawn.insert(draw["layers"][0].get<int>());
  }
  auto trained = safetensors::MappedFile::Open(dir + "/model.safetensors");
  auto base =
      safetensors::MappedFile::Open(c.demo_dir() + "/model/model.safetensors");
  ASSERT_TRUE(trained.ok() && base.ok());
  auto bytes = [](const safetensors::MappedFile& f, const std::string& name) {
    absl::Span<const std::byte> data = f.Data(*f.header().Find(name));
    return std::string(reinterpret_cast<const char*>(data.data()), data.size());
  };
  for (int layer = 0; layer < 2; ++layer) {
    const std::string q =
        "model.layers." + std::to_string(layer) + ".self_attn.q_proj.weight";
    EXPECT_EQ(bytes(**trained, q) == bytes(**base, q), drawn.count(layer) == 0)
        << q;
  }
  EXPECT_NE(bytes(**trained, "model.embed_tokens.weight"),
            bytes(**base, "model.embed_tokens.weight"));
}

// A mixture job through the CLI: two halves of the demo data, weighted,
// with the validation file as a general-data regulariser and as each
// source's validation file, and Masked Thought. It succeeds, streams each
// source's validation loss (valid_loss/<source>), shows its mixture on
// `jobs get`, and its adapter downloads.
TEST(EndToEndTest, MixtureWithARegulariserAndMaskedThought) {
  auto cluster = Cluster::Start(TestRoot("e2e-mixture"), 1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  const auto [fa, fb] = UploadDemoHalves(c);
  auto general = c.client().UploadFile(c.demo_dir() + "/valid.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(general.ok()) << general.status();
  const std::string fg = general->id();
  ASSERT_FALSE(fa.empty() || fb.empty() || fg.empty());

  auto cli = [&](std::vector<std::string> args, std::string* out) {
    return Cli(c, std::move(args), out);
  };
  std::string out;
  ASSERT_EQ(cli({"jobs", "create", "--model", "lathe-demo", "--mixture",
                 fa + ":0.7:" + fg + "," + fb + ":0.3:" + fg, "--regularizer", fg + ":0.2",
                 "--masked-thought", "0.2", "--n-epochs", "1", "--batch-size", "4",
                 "--eval-every-steps", "10", "--seed", "3", "-o", "json"},
                &out),
            0)
      << out << c.Logs();
  const auto json_start = out.find('{');
  ASSERT_NE(json_start, std::string::npos) << out;
  const std::string job_id = nlohmann::json::parse(out.substr(json_start))["id"];

  std::vector<std::map<std::string, double>> values;
  auto st = c.client().WatchJob(
      job_id, "",
      [&](const v1::WatchJobResponse& u) {
        if (u.event().type() == "metrics") {
          const auto& v = u.event().metrics().values();
          values.emplace_back(v.begin(), v.end());
        }
      },
      absl::Now() + absl::Minutes(5));
  ASSERT_TRUE(st.ok()) << st << c.Logs();
  auto done = c.client().GetJob(job_id);
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << done->error().message() << c.Logs();
  // first_exhausted: min(48 / 0.7, 32 / 0.3) = 68 draws + round(0.25 * 68)
  // = 17 general examples: 85 examples, 22 steps of 4.
  ASSERT_EQ(values.size(), 22u);
  EXPECT_EQ(done->progress().steps_total(), 22);
  for (size_t i = 0; i < values.size(); ++i) {
    const bool evaluated = (i + 1) % 10 == 0 || i + 1 == values.size();
    EXPECT_EQ(values[i].count("valid_loss/" + fa), evaluated ? 1u : 0u) << i;
    EXPECT_EQ(values[i].count("valid_loss/" + fb), evaluated ? 1u : 0u) << i;
    EXPECT_EQ(values[i].count("valid_loss/" + fg), 0u);  // it has no validation file
  }
  EXPECT_GT(values.back().at("valid_loss/" + fa), 0);

  ASSERT_EQ(cli({"jobs", "get", job_id}, &out), 0) << out;
  EXPECT_NE(out.find("training_mixture: strategy=weighted temperature=1 stop=first_exhausted"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find(fg + " file=" + fg + " proportion=0.2"), std::string::npos) << out;
  EXPECT_NE(out.find("masked_thought:   mask_rate=0.2 schedule=linear_warmup"),
            std::string::npos)
      << out;

  std::string adapter_dir = c.root() + "/adapter";
  fs::remove_all(adapter_dir);
  auto files = c.client().DownloadAdapter(job_id, adapter_dir, nullptr);
  ASSERT_TRUE(files.ok()) << files.status();
  for (const auto& f : done->result_files()) {
    EXPECT_EQ(*Sha256File(adapter_dir + "/" + f.name()), f.sha256()) << f.name();
  }

  // Another project's file, or one that does not exist, is NOT_FOUND by
  // its field; nothing is stored.
  v1::CreateJobRequest bad;
  bad.set_model("lathe-demo");
  bad.mutable_training_mixture()->add_sources()->set_file_id(fa);
  bad.mutable_training_mixture()->add_sources()->set_file_id("file-nope");
  auto refused = c.client().CreateJob(bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kNotFound) << refused.status();
  EXPECT_NE(refused.status().message().find("training_mixture.sources[1].file_id"),
            std::string::npos)
      << refused.status();
}

// A DMT job through the CLI (METHODS.md §2.2): stage 1 on two halves of
// the demo data, stage 2 on the general file plus a quarter of each half.
// It succeeds, streams each step's stage and a message as each stage
// starts, counts steps across both stages, shows its stages on `jobs get`,
// its after-job reports (forgetting on the general file, intruder
// dimensions) are on the job, and its adapter downloads.
TEST(EndToEndTest, DmtTwoStageJobThroughTheCli) {
  auto cluster = Cluster::Start(TestRoot("e2e-dmt"), 1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  const auto [fa, fb] = UploadDemoHalves(c);
  auto general = c.client().UploadFile(c.demo_dir() + "/valid.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(general.ok()) << general.status();
  const std::string fg = general->id();  // 16 lines
  ASSERT_FALSE(fa.empty() || fb.empty() || fg.empty());
  auto cli = [&](std::vector<std::string> args, std::string* out) {
    return Cli(c, std::move(args), out);
  };
  std::string out;
  ASSERT_EQ(cli({"jobs", "create", "--model", "lathe-demo", "--mixture",
                 fa + ":1:" + fg + "," + fb + ":1", "--mixture-strategy", "concat", "--dmt", fg,
                 "--dmt-k", "1/4", "--general-file", fg, "--n-epochs", "1", "--batch-size", "4",
                 "--seed", "3", "-o", "json"},
                &out),
            0)
      << out << c.Logs();
  const auto json_start = out.find('{');
  ASSERT_NE(json_start, std::string::npos) << out;
  const std::string job_id = nlohmann::json::parse(out.substr(json_start))["id"];

  std::vector<int> stages;
  std::vector<std::string> messages;
  auto st = c.client().WatchJob(
      job_id, "",
      [&](const v1::WatchJobResponse& u) {
        if (u.event().type() == "metrics") {
          stages.push_back(u.event().metrics().stage());
        } else {
          messages.push_back(u.event().message());
        }
      },
      absl::Now() + absl::Minutes(5));
  ASSERT_TRUE(st.ok()) << st << c.Logs();
  auto done = c.client().GetJob(job_id);
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << done->error().message() << c.Logs();
  // Stage 1: 80 examples, 20 steps; stage 2: 16 + floor(48 / 4) +
  // floor(32 / 4) = 36 examples, 9 steps.
  ASSERT_EQ(stages.size(), 29u);
  EXPECT_EQ(done->progress().steps_total(), 29);
  for (size_t i = 0; i < stages.size(); ++i) EXPECT_EQ(stages[i], i < 20 ? 1 : 2) << i;
  const std::string all = absl::StrJoin(messages, "\n");
  EXPECT_NE(all.find("Stage 1/2 \"specialised\" from step 1"), std::string::npos) << all;
  EXPECT_NE(all.find("Stage 2/2 \"general\" from step 21: from stage 1's weights"),
            std::string::npos)
      << all;

  ASSERT_EQ(cli({"jobs", "get", job_id}, &out), 0) << out;
  EXPECT_NE(out.find("stage:            specialised n_epochs=1 strategy=concat"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("stage:            general n_epochs=1 strategy=concat"), std::string::npos)
      << out;
  EXPECT_NE(out.find(fb + " file=" + fb + " weight=1 fraction=0.25"), std::string::npos) << out;
  // The after-job reports: the general file's loss before and after, and
  // the intruder count of every adapted matrix (2 layers x q, k, v, o).
  const v1::ForgettingReport& forgetting = done->report().forgetting();
  EXPECT_GT(forgetting.loss_before(), 0);
  EXPECT_NE(forgetting.loss_after(), forgetting.loss_before());
  EXPECT_DOUBLE_EQ(forgetting.delta(), forgetting.loss_after() - forgetting.loss_before());
  EXPECT_EQ(forgetting.tokens_counted(), "assistant");
  EXPECT_EQ(done->report().intruders().top_k(), 10);
  EXPECT_GT(done->report().intruders().matrices_size(), 0);
  EXPECT_NE(out.find("forgetting:       loss "), std::string::npos) << out;
  EXPECT_NE(out.find("intruders:        "), std::string::npos) << out;
  EXPECT_NE(all.find("general_file loss"), std::string::npos) << all;

  std::string adapter_dir = c.root() + "/adapter";
  fs::remove_all(adapter_dir);
  auto files = c.client().DownloadAdapter(job_id, adapter_dir, nullptr);
  ASSERT_TRUE(files.ok()) << files.status();
  for (const auto& f : done->result_files()) {
    EXPECT_EQ(*Sha256File(adapter_dir + "/" + f.name()), f.sha256()) << f.name();
  }

  // A stage's missing file is NOT_FOUND by its field; nothing is stored.
  v1::CreateJobRequest bad;
  bad.set_model("lathe-demo");
  bad.add_stages()->mutable_training_mixture()->add_sources()->set_file_id(fa);
  bad.add_stages()->mutable_training_mixture()->add_sources()->set_file_id("file-nope");
  auto refused = c.client().CreateJob(bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kNotFound) << refused.status();
  EXPECT_NE(refused.status().message().find("stages[1].training_mixture.sources[0].file_id"),
            std::string::npos)
      << refused.status();
}

// A merge job through the CLI: two LoRA fine-tunes of the demo (one on
// each half of its data), merged by TIES into a model folder. The job
// streams its progress, its result downloads with the sizes and hashes
// listed, the merged model scores in the engine, and an input that is not
// a fine-tuned model of the project is NOT_FOUND by its field.
TEST(EndToEndTest, MergeJobOverTwoFineTunesThroughTheCli) {
  auto cluster = Cluster::Start(TestRoot("e2e-merge"), 1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  const auto [fa, fb] = UploadDemoHalves(c);
  ASSERT_FALSE(fa.empty() || fb.empty());
  // Waits for `job_id` to end; returns it, with its non-metrics events.
  auto finish = [&](const std::string& job_id, std::vector<std::string>* messages) {
    auto st = c.client().WatchJob(
        job_id, "",
        [&](const v1::WatchJobResponse& u) {
          if (messages != nullptr && u.event().type() == "message") {
            messages->push_back(u.event().message());
          }
        },
        absl::Now() + absl::Minutes(5));
    EXPECT_TRUE(st.ok()) << st << c.Logs();
    return c.client().GetJob(job_id);
  };
  std::vector<std::string> inputs;
  for (const std::string& file : {fa, fb}) {
    v1::CreateJobRequest req;
    req.set_model("lathe-demo");
    req.set_training_file(file);
    req.set_seed(5);
    auto* hp = req.mutable_method()->mutable_supervised()->mutable_hyperparameters();
    hp->set_n_epochs(1);
    hp->set_batch_size(4);
    auto job = c.client().CreateJob(req);
    ASSERT_TRUE(job.ok()) << job.status();
    auto done = finish(job->id(), nullptr);
    ASSERT_TRUE(done.ok());
    ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << done->error().message() << c.Logs();
    inputs.push_back(done->fine_tuned_model());
  }

  std::string out;
  ASSERT_EQ(Cli(c,
                {"merges", "create", "--base", "lathe-demo", "--inputs",
                 inputs[0] + "," + inputs[1], "--method", "ties", "--density", "0.5",
                 "--weights", "1,0.5", "--suffix", "merged", "-o", "json"},
                &out),
            0)
      << out << c.Logs();
  const auto json_start = out.find('{');
  ASSERT_NE(json_start, std::string::npos) << out;
  const std::string job_id = nlohmann::json::parse(out.substr(json_start))["id"];
  std::vector<std::string> messages;
  auto done = finish(job_id, &messages);
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << done->error().message() << c.Logs();
  const std::string all = absl::StrJoin(messages, "\n");
  EXPECT_NE(all.find("Merge started on"), std::string::npos) << all;
  EXPECT_NE(all.find("Merged "), std::string::npos) << all;
  EXPECT_NE(all.find("Model uploaded (ties of " + inputs[0] + ", " + inputs[1]),
            std::string::npos)
      << all;
  EXPECT_GT(done->progress().steps_total(), 0);
  EXPECT_EQ(done->progress().steps_done(), done->progress().steps_total());
  ASSERT_EQ(Cli(c, {"jobs", "get", job_id}, &out), 0) << out;
  EXPECT_NE(out.find("merge:            ties of " + inputs[0] + ", " + inputs[1] +
                     " weights=[1,0.5] lambda=1 density=0.5 majority_sign=total"),
            std::string::npos)
      << out;

  const std::string merged = c.root() + "/merged";
  fs::remove_all(merged);
  auto files = c.client().DownloadAdapter(job_id, merged, nullptr);
  ASSERT_TRUE(files.ok()) << files.status();
  for (const auto& f : done->result_files()) {
    EXPECT_EQ(*Sha256File(merged + "/" + f.name()), f.sha256()) << f.name();
  }
  EXPECT_TRUE(fs::exists(merged + "/config.json"));
  EXPECT_TRUE(fs::exists(merged + "/model.safetensors"));
  // The merged folder is a model: the engine scores the demo data with it.
  std::string scored;
  ASSERT_EQ(RunCommand({Binaries().worker, "score", "--model", merged, "--data",
                        c.demo_dir() + "/valid.jsonl", "-o", "json"},
                       &scored),
            0)
      << scored;
  EXPECT_NE(scored.find("\"loss\""), std::string::npos) << scored;

  v1::CreateJobRequest bad;
  bad.set_model("lathe-demo");
  bad.mutable_method()->set_type("merge");
  bad.mutable_method()->mutable_merge()->add_inputs(inputs[0]);
  bad.mutable_method()->mutable_merge()->add_inputs("ft:nope");
  auto refused = c.client().CreateJob(bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kNotFound) << refused.status();
  EXPECT_NE(refused.status().message().find("method.merge.inputs[1]"), std::string::npos)
      << refused.status();
  bad.mutable_method()->mutable_merge()->set_inputs(1, inputs[1]);
  bad.set_training_file(fa);
  refused = c.client().CreateJob(bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find("training_file"), std::string::npos)
      << refused.status();

  // --lora-rank: the result is a PEFT LoRA adapter re-factorised from the
  // merged delta. Two rank-8 inputs' weighted sum has rank <= 16 per
  // matrix, so at rank 16 the adapter on the base scores as the linear
  // merge's model folder does.
  std::map<std::string, std::string> results;  // "folder" / "lora" -> dir
  for (const char* kind : {"folder", "lora"}) {
    std::vector<std::string> args = {"merges", "create", "--base", "lathe-demo", "--inputs",
                                     inputs[0] + "," + inputs[1], "--method", "linear",
                                     "--weights", "1,0.5", "-o", "json"};
    if (kind == std::string("lora")) {
      args.insert(args.end(), {"--lora-rank", "16"});
    }
    ASSERT_EQ(Cli(c, args, &out), 0) << out << c.Logs();
    const std::string id = nlohmann::json::parse(out.substr(out.find('{')))["id"];
    auto ended = finish(id, nullptr);
    ASSERT_TRUE(ended.ok());
    ASSERT_EQ(ended->status(), v1::JOB_STATUS_SUCCEEDED) << ended->error().message() << c.Logs();
    EXPECT_EQ(ended->adapter(),
              kind == std::string("lora") ? v1::ADAPTER_TYPE_LORA : v1::ADAPTER_TYPE_FULL);
    results[kind] = c.root() + "/linear-" + kind;
    ASSERT_EQ(Cli(c, {"jobs", "download", id, "--out", results[kind]}, &out), 0)
        << kind << ": " << out << c.Logs();
  }
  const auto lora_config =
      nlohmann::json::parse(ReadFileOrEmpty(results["lora"] + "/adapter_config.json"));
  EXPECT_EQ(lora_config["r"], 16);
  EXPECT_EQ(lora_config["lora_alpha"], 16);
  EXPECT_FALSE(fs::exists(results["lora"] + "/config.json"));
  auto losses = [&](std::vector<std::string> args) {
    std::string scored;
    args.insert(args.begin(), {Binaries().worker, "score"});
    args.insert(args.end(), {"--data", c.demo_dir() + "/valid.jsonl", "-o", "json"});
    EXPECT_EQ(RunCommand(args, &scored), 0) << scored;
    std::vector<double> out;
    for (absl::string_view line : absl::StrSplit(scored, '\n', absl::SkipEmpty())) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_object() && j.contains("loss") && j["loss"].is_number()) {
        out.push_back(j["loss"].get<double>());
      }
    }
    return out;
  };
  const std::vector<double> folder = losses({"--model", results["folder"]});
  const std::vector<double> adapted =
      losses({"--model", c.demo_dir() + "/model", "--adapter", results["lora"]});
  ASSERT_FALSE(folder.empty());
  ASSERT_EQ(folder.size(), adapted.size());
  for (size_t i = 0; i < folder.size(); ++i) EXPECT_NEAR(adapted[i], folder[i], 1e-4) << i;
}

// A data analysis job through the CLI: the demo's training file with its
// first line appended again. It streams its summary, its progress counts
// the lines, and report.jsonl / selected.jsonl download: a report line per
// data line naming the duplicate, the selection without it.
TEST(EndToEndTest, DataAnalysisJobThroughTheCli) {
  auto cluster = Cluster::Start(TestRoot("e2e-analyze"), 1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  std::vector<std::string> lines;
  {
    std::ifstream in(c.demo_dir() + "/train.jsonl");
    for (std::string line; std::getline(in, line);) lines.push_back(line);
  }
  lines.push_back(lines[0]);
  const std::string path = c.root() + "/data.jsonl";
  {
    std::ofstream out(path);
    for (const std::string& line : lines) out << line << "\n";
  }
  auto file = c.client().UploadFile(path, "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  std::string out;
  ASSERT_EQ(Cli(c, {"files", "analyze", file->id(), "--model", "lathe-demo", "--max-seq-len",
                    "256", "-o", "json"},
                &out),
            0)
      << out << c.Logs();
  const auto json_start = out.find('{');
  ASSERT_NE(json_start, std::string::npos) << out;
  const std::string job_id = nlohmann::json::parse(out.substr(json_start))["id"];
  std::vector<std::string> messages;
  auto st = c.client().WatchJob(
      job_id, "",
      [&](const v1::WatchJobResponse& u) {
        if (u.event().type() == "message") messages.push_back(u.event().message());
      },
      absl::Now() + absl::Minutes(5));
  ASSERT_TRUE(st.ok()) << st << c.Logs();
  auto done = c.client().GetJob(job_id);
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << done->error().message() << c.Logs();
  const std::string all = absl::StrJoin(messages, "\n");
  EXPECT_NE(all.find(absl::StrCat("Analysis of ", lines.size(), " lines")), std::string::npos)
      << all;
  EXPECT_EQ(done->progress().steps_total(), static_cast<int64_t>(lines.size()));
  ASSERT_EQ(Cli(c, {"jobs", "get", job_id}, &out), 0) << out;
  EXPECT_NE(out.find("analyze:          max_seq_len=256 loss_quantiles=0..1"), std::string::npos)
      << out;

  const std::string results = c.root() + "/analysis";
  fs::remove_all(results);
  auto files = c.client().DownloadAdapter(job_id, results, nullptr);
  ASSERT_TRUE(files.ok()) << files.status();
  std::vector<nlohmann::json> report;
  {
    std::ifstream in(results + "/report.jsonl");
    for (std::string line; std::getline(in, line);) report.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(report.size(), lines.size());
  EXPECT_EQ(report.back()["exact_duplicate_of"], 1);
  EXPECT_EQ(report.back()["kept"], false);
  EXPECT_GT(report[0]["loss"].get<double>(), 0);
  std::vector<std::string> selected;
  {
    std::ifstream in(results + "/selected.jsonl");
    for (std::string line; std::getline(in, line);) selected.push_back(line);
  }
  size_t kept = 0;
  for (const auto& r : report) kept += r["kept"].get<bool>();
  EXPECT_EQ(selected.size(), kept);
  EXPECT_LT(selected.size(), lines.size());
  EXPECT_EQ(selected[0], lines[0]);

  // Bad options are refused by field; nothing is stored.
  v1::CreateJobRequest bad;
  bad.set_model("lathe-demo");
  bad.set_training_file(file->id());
  bad.mutable_method()->set_type("analyze");
  bad.mutable_method()->mutable_analyze()->set_loss_quantile_low(0.9);
  bad.mutable_method()->mutable_analyze()->set_loss_quantile_high(0.1);
  auto refused = c.client().CreateJob(bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find("method.analyze.loss_quantile_low"),
            std::string::npos)
      << refused.status();

  // GOT-D towards the demo's validation file (METHODS.md §8.1): the budget's
  // lines are kept, each line left after the duplicates has its gradient,
  // the others are dropped as not selected.
  auto target = c.client().UploadFile(c.demo_dir() + "/valid.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(target.ok()) << target.status();
  ASSERT_EQ(Cli(c, {"files", "analyze", file->id(), "--model", "lathe-demo", "--select", "got_d",
                    "--target", target->id(), "--budget", "10", "-o", "json"},
                &out),
            0)
      << out << c.Logs();
  const std::string got_d_id = nlohmann::json::parse(out.substr(out.find('{')))["id"];
  messages.clear();
  st = c.client().WatchJob(
      got_d_id, "",
      [&](const v1::WatchJobResponse& u) {
        if (u.event().type() == "message") messages.push_back(u.event().message());
      },
      absl::Now() + absl::Minutes(5));
  ASSERT_TRUE(st.ok()) << st << c.Logs();
  done = c.client().GetJob(got_d_id);
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << done->error().message() << c.Logs();
  EXPECT_NE(absl::StrJoin(messages, "\n").find("GOT-D kept 10 at most"), std::string::npos)
      << absl::StrJoin(messages, "\n");
  ASSERT_EQ(Cli(c, {"jobs", "get", got_d_id}, &out), 0) << out;
  EXPECT_NE(out.find(absl::StrCat("got_d:            target_file=", target->id(),
                                  " budget=10 epsilon_fraction=0.1")),
            std::string::npos)
      << out;
  const std::string got_d_results = c.root() + "/got_d";
  fs::remove_all(got_d_results);
  ASSERT_TRUE(c.client().DownloadAdapter(got_d_id, got_d_results, nullptr).ok());
  report.clear();
  {
    std::ifstream in(got_d_results + "/report.jsonl");
    for (std::string line; std::getline(in, line);) report.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(report.size(), lines.size());
  size_t got_d_kept = 0;
  for (const auto& r : report) {
    got_d_kept += r["kept"].get<bool>();
    const bool duplicate = !r["exact_duplicate_of"].is_null() || !r["near_duplicate_of"].is_null();
    EXPECT_EQ(r["got_d_gradient"].is_number(), !duplicate) << r;
    if (!duplicate && !r["kept"].get<bool>()) {
      EXPECT_EQ(r["reasons"], nlohmann::json::array({"got_d_not_selected"})) << r;
    }
  }
  EXPECT_EQ(got_d_kept, 10u);
  std::vector<std::string> got_d_selected;
  {
    std::ifstream in(got_d_results + "/selected.jsonl");
    for (std::string line; std::getline(in, line);) got_d_selected.push_back(line);
  }
  EXPECT_EQ(got_d_selected.size(), 10u);

  // A target that is no file of the project is NOT_FOUND, naming the field;
  // a GOT-D selection without a budget is refused by field.
  v1::CreateJobRequest missing;
  missing.set_model("lathe-demo");
  missing.set_training_file(file->id());
  missing.mutable_method()->set_type("analyze");
  v1::AnalyzeMethod& m = *missing.mutable_method()->mutable_analyze();
  m.set_selection(v1::ANALYZE_SELECTION_GOT_D);
  m.mutable_got_d()->set_target_file("file-nope");
  m.mutable_got_d()->set_budget(3);
  refused = c.client().CreateJob(missing);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kNotFound) << refused.status();
  EXPECT_NE(refused.status().message().find("method.analyze.got_d.target_file"), std::string::npos)
      << refused.status();
  m.mutable_got_d()->set_target_file(target->id());
  m.mutable_got_d()->clear_budget();
  refused = c.client().CreateJob(missing);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find("method.analyze.got_d.budget"), std::string::npos)
      << refused.status();
}

// Rejection-sampling fine-tuning (METHODS.md §7.2) through the CLI,
// lathed and a worker: two iterations of sample -> select -> train, their
// events, one checkpoint per iteration holding its RFT set, the iterations
// in the job's report, the adapter downloaded; bad settings refused by
// field.
TEST(EndToEndTest, TwoIterationRejectionSamplingJobThroughTheCli) {
  auto cluster = Cluster::Start(TestRoot("e2e-rft"), 1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  const std::string path = c.root() + "/sums.jsonl";
  {
    std::ofstream out(path);
    for (int a = 1; a <= 6; ++a) {
      const int b = 7 - a + (a % 3);
      nlohmann::json line = {
          {"messages",
           {{{"role", "user"}, {"content", absl::StrCat("What is ", a, " plus ", b, "?")}},
            {{"role", "assistant"},
             {"content", absl::StrCat(a, " plus ", b, " is ", a + b, ".")}}}}};
      out << line.dump() << "\n";
    }
  }
  auto file = c.client().UploadFile(path, "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  std::string out;
  ASSERT_EQ(Cli(c, {"jobs", "create", "--model", "lathe-demo", "--training-file", file->id(),
                    "--method", "rft", "--iterations", "2", "--samples-per-prompt", "3",
                    "--sample-temperature", "1", "--max-new-tokens", "10",
                    "--answer-extractor", "last_number", "--dedupe", "exact", "--n-epochs",
                    "1", "--batch-size", "4", "-o", "json"},
                &out),
            0)
      << out;
  const std::string id = nlohmann::json::parse(out.substr(out.find('{')))["id"];
  ASSERT_EQ(Cli(c, {"jobs", "get", id}, &out), 0) << out;
  EXPECT_NE(out.find("rft:              iterations=2 samples_per_prompt=3 temperature=1 "
                     "top_p=1 max_new_tokens=10 answer_extractor=last_number dedupe=exact "
                     "include_gold=true init=current"),
            std::string::npos)
      << out;
  std::vector<std::string> messages;
  std::vector<double> iteration_of_step;
  auto st = c.client().WatchJob(
      id, "",
      [&](const v1::WatchJobResponse& u) {
        if (u.event().type() == "message") messages.push_back(u.event().message());
        if (u.event().type() == "metrics") {
          const auto& values = u.event().metrics().values();
          iteration_of_step.push_back(values.count("iteration") ? values.at("iteration") : 0);
        }
      },
      absl::Now() + absl::Minutes(5));
  ASSERT_TRUE(st.ok()) << st << c.Logs();
  auto done = c.client().GetJob(id);
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << done->error().message() << c.Logs();
  const std::string all = absl::StrJoin(messages, "\n");
  for (const char* what : {"Iteration 1/2: ", "Iteration 1/2 trained: steps 1-",
                           "Iteration 2/2: ", "Iteration 2/2 trained: steps "}) {
    EXPECT_NE(all.find(what), std::string::npos) << what << "\n" << all;
  }
  ASSERT_EQ(done->report().iterations_size(), 2) << done->DebugString();
  const v1::IterationSummary& one = done->report().iterations(0);
  const v1::IterationSummary& two = done->report().iterations(1);
  EXPECT_EQ(one.samples(), 18);
  EXPECT_EQ(one.rft_examples(), 6 + one.kept());
  EXPECT_EQ(two.first_step(), one.last_step());
  ASSERT_FALSE(iteration_of_step.empty());
  EXPECT_EQ(iteration_of_step.front(), 1);
  EXPECT_EQ(iteration_of_step.back(), 2);
  EXPECT_EQ(static_cast<int64_t>(iteration_of_step.size()), two.last_step());
  ASSERT_EQ(Cli(c, {"jobs", "get", id}, &out), 0) << out;
  EXPECT_NE(out.find("iteration 2:      "), std::string::npos) << out;

  // One checkpoint per iteration, each holding its RFT set.
  auto checkpoints = c.client().ListJobCheckpoints(id);
  ASSERT_TRUE(checkpoints.ok()) << checkpoints.status();
  std::set<int64_t> steps;
  for (const auto& cp : checkpoints->data()) steps.insert(cp.step_number());
  EXPECT_TRUE(steps.count(one.last_step()) && steps.count(two.last_step()))
      << checkpoints->DebugString();
  const std::string first = c.root() + "/iteration-1";
  auto cp_files = c.client().DownloadCheckpoint(id, one.last_step(), first, nullptr);
  ASSERT_TRUE(cp_files.ok()) << cp_files.status();
  size_t rft_lines = 0;
  {
    std::ifstream in(first + "/iteration_train.jsonl");
    for (std::string line; std::getline(in, line);) rft_lines += !line.empty();
  }
  EXPECT_EQ(static_cast<int64_t>(rft_lines), one.rft_examples());
  const std::string adapter = c.root() + "/rft-adapter";
  auto files = c.client().DownloadAdapter(id, adapter, nullptr);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_TRUE(fs::exists(adapter + "/adapter_model.safetensors"));

  // Bad settings are refused by field; nothing is stored.
  v1::CreateJobRequest bad;
  bad.set_model("lathe-demo");
  bad.set_training_file(file->id());
  bad.mutable_method()->set_type("rft");
  bad.mutable_method()->mutable_rft()->set_answer_extractor("regex");
  bad.mutable_method()->mutable_rft()->set_answer_pattern("(unclosed");
  auto refused = c.client().CreateJob(bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find("method.rft.answer_pattern"), std::string::npos)
      << refused.status();
  bad.mutable_method()->mutable_rft()->clear_answer_pattern();
  bad.mutable_method()->mutable_rft()->set_answer_extractor("gsm8k");
  bad.mutable_method()->mutable_rft()->set_iterations(17);
  refused = c.client().CreateJob(bad);
  EXPECT_NE(refused.status().message().find("method.rft.iterations"), std::string::npos)
      << refused.status();
}

// SPIN (METHODS.md §7.1) through the CLI, lathed and a worker: two
// iterations of DPO of the real replies over the model's own, each
// starting at ln 2, their pairs in the checkpoints, the adapter downloaded.
TEST(EndToEndTest, SpinJobThroughTheCli) {
  auto cluster = Cluster::Start(TestRoot("e2e-spin"), 1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  auto file = c.client().UploadFile(c.demo_dir() + "/valid.jsonl", "fine-tune", nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  std::string out;
  ASSERT_EQ(Cli(c, {"jobs", "create", "--model", "lathe-demo", "--training-file", file->id(),
                    "--method", "spin", "--iterations", "2", "--max-new-tokens", "8",
                    "--beta", "0.2", "--n-epochs", "1", "--batch-size", "4", "-o", "json"},
                &out),
            0)
      << out;
  const std::string id = nlohmann::json::parse(out.substr(out.find('{')))["id"];
  ASSERT_EQ(Cli(c, {"jobs", "get", id}, &out), 0) << out;
  EXPECT_NE(out.find("spin:             iterations=2 temperature=0 top_p=1 max_new_tokens=8 "
                     "accumulate_previous=true"),
            std::string::npos)
      << out;
  std::vector<std::string> messages;
  std::map<int64_t, double> loss;  // by step
  auto st = c.client().WatchJob(
      id, "",
      [&](const v1::WatchJobResponse& u) {
        if (u.event().type() == "message") messages.push_back(u.event().message());
        if (u.event().type() == "metrics") {
          loss[u.event().metrics().step()] = u.event().metrics().train_loss();
        }
      },
      absl::Now() + absl::Minutes(5));
  ASSERT_TRUE(st.ok()) << st << c.Logs();
  auto done = c.client().GetJob(id);
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->status(), v1::JOB_STATUS_SUCCEEDED) << done->error().message() << c.Logs();
  const std::string all = absl::StrJoin(messages, "\n");
  EXPECT_NE(all.find("Iteration 2/2: 16 replies generated"), std::string::npos) << all;
  ASSERT_EQ(done->report().iterations_size(), 2);
  const v1::IterationSummary& one = done->report().iterations(0);
  const v1::IterationSummary& two = done->report().iterations(1);
  // Each iteration starts at its opponent: ln 2.
  for (int64_t step : {one.first_step() + 1, two.first_step() + 1}) {
    ASSERT_TRUE(loss.count(step)) << step;
    EXPECT_NEAR(loss[step], std::log(2.0), 1e-5) << step;
  }
  EXPECT_EQ(two.rft_examples(), two.kept() + one.kept());
  const std::string second = c.root() + "/iteration-2";
  ASSERT_TRUE(c.client().DownloadCheckpoint(id, two.last_step(), second, nullptr).ok());
  size_t pairs = 0;
  {
    std::ifstream in(second + "/iteration_train.jsonl");
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      const auto pair = nlohmann::json::parse(line);
      EXPECT_TRUE(pair.contains("preferred_output") && pair.contains("non_preferred_output"));
      ++pairs;
    }
  }
  EXPECT_EQ(static_cast<int64_t>(pairs), two.rft_examples());
  ASSERT_TRUE(c.client().DownloadAdapter(id, c.root() + "/spin-adapter", nullptr).ok());
  EXPECT_TRUE(fs::exists(c.root() + "/spin-adapter/adapter_model.safetensors"));
}

}  // namespace
}  // namespace lathe::testing
