// engine_device_check: the engine's side of scripts/device-check.sh. Not a
// test; the script reads its output.
//
//   devices   every device of this machine (ListDevices)
//   compare   the logits of a model on --device in --dtype against the same
//             model on the CPU in float32, example by example, and both
//             against reference logits (Hugging Face's) when given
//   matmul    the rate of square matmuls on --device in --dtype, the
//             ceiling a training step's MFU is measured against
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/device/device.h"
#include "worker/engine/device/device_inventory.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/text/tokenizer.h"
#include "worker/engine/model/weights.h"

namespace lathe::engine {
namespace {

constexpr char kUsage[] = R"(Usage:
  engine_device_check devices
  engine_device_check compare --model DIR --data FILE.jsonl [--adapter DIR]
      [--device auto] [--dtype auto] [--reference-logits FILE.safetensors]
      [--max-logit-diff X]
  engine_device_check matmul [--device auto] [--dtype auto] [--size 8192]
      [--seconds 3]
compare scores each line of --data (its assistant turns, as training does)
with the model on the CPU in float32 and on --device in --dtype, and prints
the largest differences; --reference-logits (a tensor "logits" [1, T, V]
for the first line) is checked against both. Exit status 1 when a
difference passes --max-logit-diff.
)";

using Flags = std::map<std::string, std::string>;

absl::StatusOr<Flags> ParseFlags(int argc, char** argv,
                                 const std::vector<std::string>& known) {
  Flags flags;
  for (int i = 0; i < argc; ++i) {
    const std::string name = argv[i];
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown argument \"", name, "\" (see --help)"));
    }
    if (i + 1 == argc) {
      return absl::InvalidArgumentError(absl::StrCat(name, " needs a value"));
    }
    flags[name] = argv[++i];
  }
  return flags;
}

std::string Get(const Flags& flags, const std::string& name,
                const std::string& otherwise = "") {
  auto it = flags.find(name);
  return it == flags.end() ? otherwise : it->second;
}

std::string Gib(int64_t bytes) {
  char out[32];
  std::snprintf(out, sizeof(out), "%.1f GiB", bytes / double(1LL << 30));
  return out;
}

int Devices() {
  std::cout << "LibTorch with CUDA: " << (CudaBuild() ? "yes" : "no") << "\n";
  for (const DeviceInfo& d : ListDevices()) {
    std::cout << DeviceKindName(d.kind) << ":" << d.index << "  " << d.name
              << "  total " << Gib(d.total_memory_bytes) << ", free "
              << Gib(d.free_memory_bytes) << "\n";
  }
  return 0;
}

// Where and how one copy of the model computes.
struct Placement {
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;

  std::string Name() const {
    return absl::StrCat(device.str(), " ",
                        dtype == torch::kBFloat16 ? "bfloat16" : "float32");
  }
};

// The model of `model_dir` (and `adapter_dir`'s LoRA, if any) with float32
// weights on `device`.
absl::StatusOr<std::unique_ptr<LlamaModel>> LoadOn(
    const std::string& model_dir, const std::string& adapter_dir,
    const torch::Device& device) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(TensorMap weights, LoadModelWeights(model_dir));
  for (auto& [name, tensor] : weights) tensor = tensor.to(device);
  ASSIGN_OR_RETURN(
      std::unique_ptr<LlamaModel> model,
      LlamaModel::FromTensors(config, std::move(weights), model_dir));
  if (adapter_dir.empty()) return model;
  RETURN_IF_ERROR(LoadAdapter(*model, adapter_dir).status());
  for (DecoderLayer& layer : model->layers()) {
    for (const char* name : kProjectionNames) {
      Linear* p = layer.Projection(name);
      if (!p->lora_a.defined()) continue;
      p->lora_a = p->lora_a.to(device);
      p->lora_b = p->lora_b.to(device);
    }
  }
  return model;
}

// Logits [1, T, V] of `ids`, as float32 on the CPU.
torch::Tensor Logits(const LlamaModel& model, const Placement& where,
                     const std::vector<int32_t>& ids) {
  torch::NoGradGuard no_grad;
  ComputeDtypeScope scope(where.device, where.dtype);
  const torch::Tensor input =
      torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64)
          .view({1, -1})
          .to(where.device);
  return model.Forward(input, torch::ones_like(input), false)
      .to(torch::kCPU, torch::kFloat32);
}

// log p(ids[t] | ids[..t-1]) for t = 1 .. T-1, float64.
torch::Tensor TargetLogprobs(const torch::Tensor& logits,
                             const std::vector<int32_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  const torch::Tensor next = torch::tensor(
      std::vector<int64_t>(ids.begin() + 1, ids.end()), torch::kInt64);
  return torch::log_softmax(logits[0].slice(0, 0, T - 1).to(torch::kFloat64),
                            -1)
      .gather(1, next.unsqueeze(1))
      .squeeze(1);
}

double MaskedLoss(const torch::Tensor& logprobs,
                  const std::vector<uint8_t>& mask) {
  double sum = 0;
  int64_t n = 0;
  for (size_t t = 1; t < mask.size(); ++t) {
    if (mask[t] == 0) continue;
    sum -= logprobs[static_cast<int64_t>(t) - 1].item<double>();
    ++n;
  }
  return n > 0 ? sum / n : std::nan("");
}

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64))
      .abs()
      .max()
      .item<double>();
}

absl::Status Compare(const Flags& flags, bool* within_limit) {
  const std::string model_dir = Get(flags, "--model");
  const std::string data = Get(flags, "--data");
  if (model_dir.empty() || data.empty()) {
    return absl::InvalidArgumentError("--model and --data are required");
  }
  Placement target;
  ASSIGN_OR_RETURN(target.device, ParseDevice(Get(flags, "--device", "auto")));
  ASSIGN_OR_RETURN(target.dtype,
                   ResolveDtype(Get(flags, "--dtype", "auto"), target.device));
  const Placement reference;
  double limit = INFINITY;
  if (!Get(flags, "--max-logit-diff").empty() &&
      !absl::SimpleAtod(Get(flags, "--max-logit-diff"), &limit)) {
    return absl::InvalidArgumentError("--max-logit-diff: not a number");
  }

  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                   Tokenizer::Load(model_dir));
  ASSIGN_OR_RETURN(Dataset dataset,
                   LoadChatDataset(data, *tokenizer,
                                   ChatTemplateFor(*tokenizer, ""), 1 << 16));
  const std::string adapter = Get(flags, "--adapter");
  ASSIGN_OR_RETURN(auto reference_model,
                   LoadOn(model_dir, adapter, reference.device));
  ASSIGN_OR_RETURN(auto target_model,
                   LoadOn(model_dir, adapter, target.device));

  double max_logit = 0, max_logprob = 0, max_loss = 0;
  torch::Tensor first_reference, first_target;
  for (size_t i = 0; i < dataset.examples.size(); ++i) {
    const Example& e = dataset.examples[i];
    torch::Tensor ref, got;
    try {
      ref = Logits(*reference_model, reference, e.ids);
      got = Logits(*target_model, target, e.ids);
    } catch (const std::exception& error) {  // c10::Error and a few others
      return absl::InternalError(absl::StrCat(
          "example ", i + 1, ": the forward pass failed: ", error.what()));
    }
    if (i == 0) {
      first_reference = ref;
      first_target = got;
    }
    const torch::Tensor ref_lp = TargetLogprobs(ref, e.ids);
    const torch::Tensor got_lp = TargetLogprobs(got, e.ids);
    const double logit = MaxAbsDiff(ref, got);
    const double logprob = MaxAbsDiff(ref_lp, got_lp);
    const double ref_loss = MaskedLoss(ref_lp, e.loss_mask);
    const double got_loss = MaskedLoss(got_lp, e.loss_mask);
    max_logit = std::max(max_logit, logit);
    max_logprob = std::max(max_logprob, logprob);
    max_loss = std::max(max_loss, std::abs(ref_loss - got_loss));
    std::printf(
        "example %zu: %zu tokens, max |logit diff| %.6g, max |logprob diff| "
        "%.6g, loss %.6f (%s) vs %.6f (%s)\n",
        i + 1, e.ids.size(), logit, logprob, ref_loss, reference.Name().c_str(),
        got_loss, target.Name().c_str());
  }
  std::printf(
      "compare %s vs %s: %zu examples, max |logit diff| %.6g, max |logprob "
      "diff| %.6g, max |loss diff| %.6g\n",
      target.Name().c_str(), reference.Name().c_str(), dataset.examples.size(),
      max_logit, max_logprob, max_loss);
  *within_limit = max_logit <= limit;

  const std::string reference_file = Get(flags, "--reference-logits");
  if (!reference_file.empty() && first_reference.defined()) {
    ASSIGN_OR_RETURN(TensorMap file, LoadSafetensors(reference_file));
    auto it = file.find("logits");
    if (it == file.end() ||
        !it->second.sizes().equals(first_reference.sizes())) {
      return absl::InvalidArgumentError(
          absl::StrCat(reference_file,
                       ": no tensor \"logits\" of the first example's shape"));
    }
    const double ref_diff = MaxAbsDiff(first_reference, it->second);
    const double target_diff = MaxAbsDiff(first_target, it->second);
    std::printf(
        "reference logits (example 1): max |logit diff| %.6g (%s), %.6g (%s)\n",
        ref_diff, reference.Name().c_str(), target_diff, target.Name().c_str());
    *within_limit = *within_limit && target_diff <= limit;
  }
  return absl::OkStatus();
}

absl::Status Matmul(const Flags& flags) {
  Placement where;
  ASSIGN_OR_RETURN(where.device, ParseDevice(Get(flags, "--device", "auto")));
  ASSIGN_OR_RETURN(where.dtype,
                   ResolveDtype(Get(flags, "--dtype", "auto"), where.device));
  int64_t n = 8192;
  double seconds = 3;
  if (!absl::SimpleAtoi(Get(flags, "--size", "8192"), &n) || n <= 0 ||
      !absl::SimpleAtod(Get(flags, "--seconds", "3"), &seconds)) {
    return absl::InvalidArgumentError("--size and --seconds must be numbers");
  }
  try {
    torch::NoGradGuard no_grad;
    const auto options = torch::TensorOptions(where.device).dtype(where.dtype);
    const torch::Tensor a = torch::randn({n, n}, options);
    const torch::Tensor b = torch::randn({n, n}, options);
    torch::Tensor c;
    for (int i = 0; i < 3; ++i) c = torch::mm(a, b);  // warm-up
    SynchronizeDevice(where.device);
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    int64_t runs = 0;
    double elapsed = 0;
    // Launches in groups, so a GPU's queue stays full between the checks.
    while (elapsed < seconds) {
      for (int i = 0; i < 10; ++i) c = torch::mm(a, b);
      runs += 10;
      SynchronizeDevice(where.device);
      elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    }
    const double tflops = 2.0 * n * n * n * runs / elapsed / 1e12;
    std::printf("matmul %s: %lld x %lld, %lld runs in %.2f s: %.4g TFLOP/s\n",
                where.Name().c_str(), static_cast<long long>(n),
                static_cast<long long>(n), static_cast<long long>(runs),
                elapsed, tflops);
  } catch (const std::exception& error) {
    return absl::InternalError(absl::StrCat("matmul failed: ", error.what()));
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  const std::string command = argc >= 2 ? argv[1] : "";
  if (command.empty() || command == "--help" || command == "-h") {
    std::cout << kUsage;
    return command.empty() ? 2 : 0;
  }
  if (command == "devices") return Devices();
  absl::Status status;
  bool within_limit = true;
  if (command == "compare") {
    auto flags =
        ParseFlags(argc - 2, argv + 2,
                   {"--model", "--data", "--adapter", "--device", "--dtype",
                    "--reference-logits", "--max-logit-diff"});
    status = flags.ok() ? Compare(*flags, &within_limit) : flags.status();
  } else if (command == "matmul") {
    auto flags = ParseFlags(argc - 2, argv + 2,
                            {"--device", "--dtype", "--size", "--seconds"});
    status = flags.ok() ? Matmul(*flags) : flags.status();
  } else {
    std::cerr << "engine_device_check: unknown command \"" << command << "\"\n"
              << kUsage;
    return 2;
  }
  if (!status.ok()) {
    std::cerr << "engine_device_check " << command << ": " << status << "\n";
    return 2;
  }
  if (!within_limit) {
    std::cerr << "engine_device_check compare: a logit difference passes "
                 "--max-logit-diff\n";
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace lathe::engine

int main(int argc, char** argv) { return lathe::engine::Main(argc, argv); }
