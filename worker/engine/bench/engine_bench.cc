// engine_bench: training throughput of the engine on CPU (or whatever
// LibTorch runs on), on a random Llama of a given shape with the demo's
// tokenizer and generated data. Not a test. One configuration per run;
// `engine_bench --help` lists the flags. Prints the configuration, then
//   tokens/s (real tokens), padding tokens, the loss path's largest logits
//   block, and the process's peak resident memory (VmHWM).
#include <torch/torch.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <thread>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/text/chat_template.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/text/tokenizer.h"
#include "worker/engine/device/device.h"
#include "worker/engine/device/peak_memory.h"
#include "worker/engine/device/placement.h"
#include "worker/engine/model/shared_base.h"
#include "worker/engine/recipes/run.h"

namespace lathe::engine {
namespace {

struct BenchOptions {
  DemoModelSize model = {.hidden_size = 256,
                         .intermediate_size = 688,
                         .num_hidden_layers = 4,
                         .num_attention_heads = 8,
                         .num_key_value_heads = 4,
                         .vocab_size = 32000};
  int batch = 4;
  int seq_len = 256;
  std::string method = "lora";
  // --method=full only: LISA's activated layers (0 = every weight trained)
  // and interval.
  int lisa_layers = 0;
  int lisa_interval = 20;
  double half_ft = 0;  // --method=full only: HFT's fraction (0 = off)
  std::string objective = "sft";  // sft, dpo or orpo
  int lora_rank = 16;
  bool lora_dora = false;
  double masked_thought = 0;  // Masked Thought's mask rate; 0 = off
  std::string lora_targets =
      "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
  std::string data = "chat";         // chat or text
  double assistant_share = 1.0 / 3;  // chat: of each conversation's words
  bool packing = true;
  int loss_chunk_tokens = 1024;
  bool activation_checkpointing = false;
  int threads = 2;
  int steps = 8;
  int warmup_steps = 2;
  std::string device = "cpu";  // the run spec's device.device
  std::string dtype = "auto";  // device.dtype: auto, float32, bfloat16
  // LoRA / prompt tuning: this many jobs (seeds 42, 43, ...) trained one
  // after another, then all at once in this process over one shared base.
  int jobs = 1;
};

constexpr char kUsage[] = R"(Usage: engine_bench [--flag=value ...]
  --hidden=256 --intermediate=688 --layers=4 --heads=8 --kv_heads=4
  --vocab=32000          model shape (random weights, the demo tokenizer)
  --batch=4 --seq_len=256
                         examples per step; each is 1/2 to 1 x seq_len
                         tokens long, so a padded batch carries padding
  --method=lora          lora, full or prompt_tuning (20 virtual tokens)
  --lisa_layers=0 --lisa_interval=20
                         full only: train LISA's drawn layers (0 = all)
  --half_ft=0            full only: HFT with this fraction of the matrices
                         (0 = off)
  --objective=sft        sft, dpo or orpo (preference pairs: the chat data's
                         prompt with its answer preferred to a second one of
                         the same length; a step holds batch x 2 rows)
  --lora_dora=false      DoRA on the LoRA projections
  --masked_thought=0     Masked Thought's mask rate (sft)
  --lora_rank=16 --lora_targets=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
  --data=chat            chat (a user turn, then an assistant turn that
                         holds --assistant_share of the words) or text
  --assistant_share=0.333
  --packing=true --loss_chunk_tokens=1024 --activation_checkpointing=false
  --threads=2            LibTorch intra-op threads
  --steps=8 --warmup_steps=2
                         measured steps, after the warm-up steps
  --device=cpu --dtype=auto
                         the run spec's device section (cuda, cuda:N, auto;
                         float32, bfloat16; auto = bf16 on CUDA)
  --jobs=1               lora / prompt_tuning: train this many jobs one
                         after another, then all at once (threads of this
                         process over one shared copy of the base), and
                         print both phases' aggregate tokens/s and memory
  --help                 this text
)";

// Training FLOPs per token as PaLM's appendix counts them: 6 per weight of
// the matrix products (forward 2, backward 4), plus attention's 12 L C T;
// the embedding lookup costs none, the output head counts.
int64_t TrainFlopsPerToken(const BenchOptions& o) {
  const DemoModelSize& m = o.model;
  const int64_t C = m.hidden_size, L = m.num_hidden_layers;
  const int64_t head_dim = C / m.num_attention_heads;
  const int64_t kv = m.num_key_value_heads * head_dim;
  const int64_t per_layer =
      C * C * 2 + C * kv * 2 + 3 * C * m.intermediate_size;
  const int64_t n = L * per_layer + C * m.vocab_size;
  return 6 * n + 12 * L * C * o.seq_len;
}

absl::Status ParseFlag(const std::string& arg, BenchOptions& o) {
  const std::vector<std::string> kv =
      absl::StrSplit(arg, absl::MaxSplits('=', 1));
  if (kv.size() != 2 || kv[0].rfind("--", 0) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown argument \"", arg, "\" (see --help)"));
  }
  const std::string name = kv[0].substr(2), value = kv[1];
  auto integer = [&](int& out) {
    return absl::SimpleAtoi(value, &out) && out > 0;
  };
  auto boolean = [&](bool& out) {
    if (value != "true" && value != "false") return false;
    out = value == "true";
    return true;
  };
  bool ok;
  if (name == "hidden")
    ok = integer(o.model.hidden_size);
  else if (name == "intermediate")
    ok = integer(o.model.intermediate_size);
  else if (name == "layers")
    ok = integer(o.model.num_hidden_layers);
  else if (name == "heads")
    ok = integer(o.model.num_attention_heads);
  else if (name == "kv_heads")
    ok = integer(o.model.num_key_value_heads);
  else if (name == "vocab")
    ok = integer(o.model.vocab_size);
  else if (name == "batch")
    ok = integer(o.batch);
  else if (name == "seq_len")
    ok = integer(o.seq_len);
  else if (name == "method")
    ok = (o.method = value) == "lora" || value == "full" ||
         value == "prompt_tuning";
  else if (name == "lisa_layers")
    ok = integer(o.lisa_layers);
  else if (name == "lisa_interval")
    ok = integer(o.lisa_interval);
  else if (name == "half_ft")
    ok = absl::SimpleAtod(value, &o.half_ft);
  else if (name == "objective")
    ok = (o.objective = value) == "sft" || value == "dpo" || value == "orpo";
  else if (name == "lora_dora")
    ok = boolean(o.lora_dora);
  else if (name == "masked_thought") {
    ok = absl::SimpleAtod(value, &o.masked_thought) && o.masked_thought >= 0 &&
         o.masked_thought <= 1;
  } else if (name == "lora_rank")
    ok = integer(o.lora_rank);
  else if (name == "lora_targets")
    ok = !(o.lora_targets = value).empty();
  else if (name == "data")
    ok = (o.data = value) == "chat" || value == "text";
  else if (name == "assistant_share") {
    ok = absl::SimpleAtod(value, &o.assistant_share) && o.assistant_share > 0 &&
         o.assistant_share < 1;
  } else if (name == "packing")
    ok = boolean(o.packing);
  else if (name == "loss_chunk_tokens")
    ok = integer(o.loss_chunk_tokens);
  else if (name == "activation_checkpointing") {
    ok = boolean(o.activation_checkpointing);
  } else if (name == "threads")
    ok = integer(o.threads);
  else if (name == "steps")
    ok = integer(o.steps);
  else if (name == "warmup_steps")
    ok = integer(o.warmup_steps);
  else if (name == "device")
    ok = !(o.device = value).empty();
  else if (name == "dtype")
    ok = (o.dtype = value) == "auto" || value == "float32" ||
         value == "bfloat16";
  else if (name == "jobs")
    ok = integer(o.jobs) && o.jobs >= 1;
  else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown flag --", name, " (see --help)"));
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad value for --", name, ": \"", value, "\""));
  }
  return absl::OkStatus();
}

// `words` words of filler text.
std::string Words(std::mt19937& rng, int words) {
  static const char* kWords[] = {"the",   "capital", "of",    "France", "is",
                                 "Paris", "red",     "green", "plus",   "two",
                                 "three", "colour",  "sum",   "sky",    "blue"};
  std::string out;
  for (int i = 0; i < words; ++i) {
    absl::StrAppend(&out, i ? " " : "", kWords[rng() % std::size(kWords)]);
  }
  return out;
}

// `n` examples of 1/2 to 1 x seq_len tokens (words_per_token converts),
// with the chat template's few tokens on top, cut to seq_len by the trainer.
void WriteData(const std::string& path, const BenchOptions& o, int n,
               double words_per_token) {
  std::mt19937 rng(7);
  std::ofstream out(path);
  const int usable = o.seq_len - 16;  // the template's role markers
  for (int i = 0; i < n; ++i) {
    const int tokens = usable / 2 + static_cast<int>(rng() % (usable / 2));
    const int words = std::max(2, static_cast<int>(tokens * words_per_token));
    nlohmann::json line;
    if (o.objective != "sft") {
      const int answer =
          std::max(1, static_cast<int>(words * o.assistant_share));
      const nlohmann::json reply = {{"role", "assistant"},
                                    {"content", Words(rng, answer)}};
      nlohmann::json other = reply;
      other["content"] = Words(rng, answer);
      line = {{"input",
               {{"messages",
                 {{{"role", "user"}, {"content", Words(rng, words - answer)}}}}}},
              {"preferred_output", {reply}},
              {"non_preferred_output", {other}}};
    } else if (o.data == "text") {
      line = {{"text", Words(rng, words)}};
    } else {
      const int answer =
          std::max(1, static_cast<int>(words * o.assistant_share));
      line = {{"messages",
               {{{"role", "user"}, {"content", Words(rng, words - answer)}},
                {{"role", "assistant"}, {"content", Words(rng, answer)}}}}};
    }
    out << line.dump() << "\n";
  }
}

// Words of Words() per token of `tokenizer`.
absl::StatusOr<double> WordsPerToken(const Tokenizer& tokenizer) {
  std::mt19937 rng(1);
  absl::StatusOr<Encoding> sample = tokenizer.Encode(Words(rng, 1000));
  if (!sample.ok()) return sample.status();
  return 1000.0 / static_cast<double>(sample->ids.size());
}

// The share of the data's tokens that carry a loss, as the trainer sees it.
absl::StatusOr<double> TargetShare(const Tokenizer& tokenizer,
                                   const std::string& path, int seq_len) {
  absl::StatusOr<Dataset> data =
      LoadChatDataset(path, tokenizer, ChatTemplateFor(tokenizer, ""), seq_len);
  if (!data.ok()) return data.status();
  int64_t tokens = 0, targets = 0;
  for (const Example& e : data->examples) {
    tokens += static_cast<int64_t>(e.ids.size());
    for (uint8_t m : e.loss_mask) targets += m;
  }
  return static_cast<double>(targets) / static_cast<double>(tokens);
}

// A memory figure of this process's /proc/self/status ("VmHWM:" its peak
// resident memory, "VmRSS:" the current) in MiB, or -1.
double StatusMib(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key, 0) == 0) {
      return std::strtod(line.c_str() + key.size(), nullptr) / 1024;
    }
  }
  return -1;
}

double PeakRssMib() { return StatusMib("VmHWM:"); }
double RssMib() { return StatusMib("VmRSS:"); }

// One phase of --jobs: the real tokens of every job's steps after its
// warm-up over the time they took (alone: the sum of each job's span from
// the end of its warm-up to its last step; together: from the moment every
// job has warmed up, each waiting for the others there, to the last job's
// last step), and the memory in use at its fullest (on a GPU the caching
// allocator's peak; on the CPU the largest RSS seen at a step). Setting up
// and the after-job work (export) are left out of both.
struct JobsPhase {
  double tokens_per_second = 0;
  double seconds = 0;
  int64_t peak_mib = 0;
  bool ok = true;
};

JobsPhase RunJobs(const RunSpec& base_spec, const BenchOptions& o, bool together,
                  const std::optional<torch::Device>& cuda) {
  using Clock = std::chrono::steady_clock;
  if (cuda.has_value()) (void)ResetPeakMemory(*cuda);
  std::mutex mu;
  std::condition_variable warmed_up;
  int warm = 0;
  Clock::time_point all_warm, last_step;
  double tokens = 0, alone_seconds = 0, peak_rss = RssMib();
  bool ok = true;
  auto run = [&](int i) {
    // The jobs at once split the CPU's threads, as a worker's do.
    if (together) ShareCpuThreads(o.jobs);
    RunSpec spec = base_spec;
    spec.seed = 42 + i;
    spec.output.dir = absl::StrCat(base_spec.output.dir, "-", together ? "together" : "alone",
                                   "-", i);
    Clock::time_point my_warm;
    int64_t warm_tokens = 0;
    TrainHooks hooks;
    hooks.on_step = [&](const StepMetrics& m) {
      const double rss = RssMib();
      std::unique_lock<std::mutex> lock(mu);
      peak_rss = std::max(peak_rss, rss);
      const auto now = Clock::now();
      if (m.step == o.warmup_steps) {
        warm_tokens = m.trained_tokens;
        my_warm = now;
        if (together && ++warm == o.jobs) {
          all_warm = Clock::now();
          warmed_up.notify_all();
        }
        if (together) warmed_up.wait(lock, [&] { return warm == o.jobs; });
        my_warm = Clock::now();
      }
      if (m.step == m.total_steps) {
        tokens += static_cast<double>(m.trained_tokens - warm_tokens);
        alone_seconds += std::chrono::duration<double>(now - my_warm).count();
        last_step = std::max(last_step, now);
      }
    };
    absl::StatusOr<TrainResult> result = Train(spec, hooks);
    std::lock_guard<std::mutex> lock(mu);
    if (!result.ok()) {
      std::cerr << "job " << i << ": " << result.status() << "\n";
      ok = false;
      if (together && ++warm == o.jobs) warmed_up.notify_all();
    }
  };
  if (together) {
    std::vector<std::thread> threads;
    for (int i = 0; i < o.jobs; ++i) threads.emplace_back(run, i);
    for (std::thread& t : threads) t.join();
  } else {
    for (int i = 0; i < o.jobs; ++i) run(i);
  }
  JobsPhase phase;
  phase.seconds = together ? std::chrono::duration<double>(last_step - all_warm).count()
                           : alone_seconds;
  phase.tokens_per_second = tokens / phase.seconds;
  phase.peak_mib = static_cast<int64_t>(peak_rss);
  phase.ok = ok;
  if (cuda.has_value()) {
    if (absl::StatusOr<int64_t> peak = PeakMemoryBytes(*cuda); peak.ok()) {
      phase.peak_mib = *peak >> 20;
    }
  }
  return phase;
}

// --jobs: the same K jobs alone one after another, then together. The base
// is held through both phases, so neither counts reading it.
int RunManyJobs(const BenchOptions& o, const RunSpec& options) {
  absl::StatusOr<Placement> placement = ResolvePlacement(options.device);
  if (!placement.ok()) {
    std::cerr << placement.status() << "\n";
    return 1;
  }
  const int64_t before_base = static_cast<int64_t>(RssMib());
  absl::StatusOr<std::shared_ptr<const SharedBase>> base =
      AcquireSharedBase(options.model.dir, placement->device, placement->compute);
  if (!base.ok()) {
    std::cerr << base.status() << "\n";
    return 1;
  }
  std::optional<torch::Device> cuda;
  if (placement->device.is_cuda()) cuda = placement->device;
  const int64_t base_mib = (*base)->bytes >> 20;
  const JobsPhase alone = RunJobs(options, o, /*together=*/false, cuda);
  const JobsPhase together = RunJobs(options, o, /*together=*/true, cuda);
  if (!alone.ok || !together.ok) return 1;
  std::cout << "model: hidden " << o.model.hidden_size << ", intermediate "
            << o.model.intermediate_size << ", " << o.model.num_hidden_layers
            << " layers, vocab " << o.model.vocab_size << "; " << o.method
            << (o.method == "lora" ? absl::StrCat(" r=", o.lora_rank, " on ", o.lora_targets)
                                   : std::string())
            << "; batch " << o.batch << " x up to " << o.seq_len << ", "
            << o.steps << " measured steps a job after " << o.warmup_steps
            << " warm-up, " << o.threads
            << " threads, device " << o.device << ", dtype " << o.dtype << "\n"
            << "base: " << base_mib << " MiB, held once (RSS before it: "
            << before_base << " MiB)\n"
            << o.jobs << " jobs one after another: "
            << static_cast<int64_t>(alone.tokens_per_second) << " tokens/s ("
            << alone.seconds << " s), peak " << (cuda ? "device memory " : "RSS ")
            << alone.peak_mib << " MiB\n"
            << o.jobs << " jobs at once over the shared base: "
            << static_cast<int64_t>(together.tokens_per_second) << " tokens/s ("
            << together.seconds << " s), peak " << (cuda ? "device memory " : "RSS ")
            << together.peak_mib << " MiB\n"
            << "aggregate speed-up: " << together.tokens_per_second / alone.tokens_per_second
            << "x; memory of " << o.jobs << " jobs together vs one alone: +"
            << together.peak_mib - alone.peak_mib << " MiB (" << o.jobs
            << " separate processes would hold " << o.jobs << " x " << base_mib
            << " MiB of base)" << std::endl;
  return 0;
}

int Run(const BenchOptions& o) {
  torch::set_num_threads(o.threads);
  const std::string dir = (std::filesystem::temp_directory_path() /
                           absl::StrCat("lathe_engine_bench.", getpid()))
                              .string();
  std::filesystem::remove_all(dir);
  absl::Status status = MakeDemo(dir);
  if (status.ok()) status = ResizeDemoModel(dir, o.model);
  if (!status.ok()) {
    std::cerr << status << "\n";
    return 1;
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::Load(dir + "/model");
  if (!tokenizer.ok()) {
    std::cerr << tokenizer.status() << "\n";
    return 1;
  }
  const absl::StatusOr<double> words_per_token = WordsPerToken(**tokenizer);
  if (!words_per_token.ok()) {
    std::cerr << words_per_token.status() << "\n";
    return 1;
  }
  const std::string data = dir + "/bench.jsonl";
  WriteData(data, o, o.batch * (o.warmup_steps + o.steps), *words_per_token);

  RunSpec options;
  options.model.dir = dir + "/model";
  options.data.training_file = data;
  options.data.batch_size = o.batch;
  options.data.max_seq_len = o.seq_len;
  options.data.packing = o.packing;
  options.output.dir = dir + "/out";
  options.schedule.n_epochs = 1;
  options.optimizer.learning_rate = 1e-4;
  options.objective = SftSpec{
      .loss_chunk_tokens = o.loss_chunk_tokens,
      .masked_thought = {.mask_rate = o.masked_thought}};
  if (o.objective == "dpo") {
    options.objective = DpoSpec{.max_prompt_len = o.seq_len / 2,
                                .loss_chunk_tokens = o.loss_chunk_tokens};
  } else if (o.objective == "orpo") {
    options.objective = OrpoSpec{.max_prompt_len = o.seq_len / 2,
                                 .loss_chunk_tokens = o.loss_chunk_tokens};
  }
  options.device.activation_checkpointing = o.activation_checkpointing;
  options.device.device = o.device;
  options.device.dtype = o.dtype;
  if (o.method == "full") {
    options.adapter = FullSpec{};
    if (o.lisa_layers > 0) {
      options.trainable.lisa = LisaSpec{.activated_layers = o.lisa_layers,
                                        .interval_steps = o.lisa_interval};
    }
    if (o.half_ft > 0) {
      options.trainable.half_ft = HalfFtSpec{.fraction = o.half_ft};
    }
  } else if (o.method == "prompt_tuning") {
    options.adapter = PromptTuningSpec{.num_virtual_tokens = 20};
  } else {
    options.adapter =
        LoraSpec{.rank = o.lora_rank,
                 .alpha = 2.0 * o.lora_rank,
                 .target_modules = absl::StrSplit(o.lora_targets, ','),
                 .use_dora = o.lora_dora};
  }

  if (o.jobs > 1) {
    if (o.method == "full") {
      std::cerr << "engine_bench: --jobs is for lora and prompt_tuning (full "
                   "fine-tuning trains its own copy of the base)\n";
      return 2;
    }
    options.evaluation.intruder_top_k = 0;  // an after-job report, not training
    const int rc = RunManyJobs(o, options);
    std::filesystem::remove_all(dir);
    return rc;
  }
  const absl::StatusOr<double> share =
      o.objective == "sft" ? TargetShare(**tokenizer, data, o.seq_len)
                           : absl::StatusOr<double>(o.assistant_share);
  if (!share.ok()) {
    std::cerr << share.status() << "\n";
    return 1;
  }
  double tokens = 0, seconds = 0;
  int64_t previous_tokens = 0;
  TrainHooks hooks;
  hooks.on_step = [&](const StepMetrics& m) {
    const int64_t step_tokens = m.trained_tokens - previous_tokens;
    previous_tokens = m.trained_tokens;
    if (m.step <= o.warmup_steps) return;
    tokens += step_tokens;
    seconds += step_tokens / m.tokens_per_second;
  };
  // On a GPU, the caching allocator's peak over the run (the CPU's peak is
  // the process's RSS, printed below).
  absl::StatusOr<torch::Device> device = ParseDevice(o.device);
  if (device.ok() && device->is_cuda()) {
    (void)ResetPeakMemory(*device);
  }
  absl::StatusOr<TrainResult> result = Train(options, hooks);
  std::string device_peak;
  if (device.ok() && device->is_cuda()) {
    if (absl::StatusOr<int64_t> peak = PeakMemoryBytes(*device); peak.ok()) {
      device_peak = absl::StrCat("peak device memory: ", *peak >> 20, " MiB\n");
    }
  }
  std::filesystem::remove_all(dir);
  if (!result.ok()) {
    std::cerr << result.status() << "\n";
    return 1;
  }
  std::cout << "model: hidden " << o.model.hidden_size << ", intermediate "
            << o.model.intermediate_size << ", " << o.model.num_hidden_layers
            << " layers, " << o.model.num_attention_heads << "/"
            << o.model.num_key_value_heads << " heads, vocab "
            << o.model.vocab_size << "; " << o.objective << ", " << o.method;
  if (o.method == "lora")
    std::cout << " r=" << o.lora_rank << " on " << o.lora_targets;
  if (o.method == "full" && o.lisa_layers > 0) {
    std::cout << " LISA " << o.lisa_layers << " layers every "
              << o.lisa_interval << " steps";
  }
  std::cout << "\ndata: " << o.data << ", "
            << static_cast<int>(100 * *share + 0.5)
            << "% of tokens carry a loss; batch " << o.batch << " x up to "
            << o.seq_len << "; packing " << o.packing << ", loss chunks of "
            << o.loss_chunk_tokens << ", activation checkpointing "
            << o.activation_checkpointing << ", " << o.threads << " threads, "
            << "device " << o.device << ", dtype " << o.dtype << "\n"
            << "tokens/s: " << static_cast<int64_t>(tokens / seconds)
            << " (real tokens, " << o.steps << " steps after " << o.warmup_steps
            << " warm-up)\n"
            << "padding tokens: " << result->padding_tokens << " of "
            << result->padding_tokens + result->trained_tokens << " computed\n"
            << "loss path peak: " << result->loss_peak_bytes / (1 << 20)
            << " MiB of logits\n"
            << "peak RSS: " << static_cast<int64_t>(PeakRssMib()) << " MiB\n"
            << device_peak
            << "train FLOPs per token: " << TrainFlopsPerToken(o)
            << " (6N + 12 L C T, PaLM's convention; N without embeddings)"
            << std::endl;
  return 0;
}

int Main(int argc, char** argv) {
  BenchOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (absl::Status s = ParseFlag(arg, options); !s.ok()) {
      std::cerr << "engine_bench: " << s.message() << "\n";
      return 2;
    }
  }
  return Run(options);
}

}  // namespace
}  // namespace lathe::engine

int main(int argc, char** argv) { return lathe::engine::Main(argc, argv); }
