#include "worker/engine/adapters/selection.h"

#include <algorithm>
#include <numeric>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/half_ft.h"
#include "common/layer_ranges.h"
#include "common/status_macros.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

constexpr uint32_t kLisaStream = 0x4C495341;  // "LISA"

std::mt19937_64 SeededRng(uint64_t seed, uint32_t stream) {
  std::seed_seq seq{static_cast<uint32_t>(seed),
                    static_cast<uint32_t>(seed >> 32), stream};
  return std::mt19937_64(seq);
}

// "model.layers.{l}.<path>": l and <path>, or -1 outside the layers.
std::pair<int, std::string> LayerOf(const std::string& name) {
  constexpr absl::string_view kPrefix = "model.layers.";
  if (!absl::StartsWith(name, kPrefix)) return {-1, ""};
  const size_t dot = name.find('.', kPrefix.size());
  return {std::stoi(name.substr(kPrefix.size(), dot - kPrefix.size())),
          name.substr(dot + 1)};
}

bool HasComponent(const std::string& path, const std::string& component) {
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    if (part == component) return true;
  }
  return false;
}

absl::Status Invalid(const std::string& field, const std::string& rule) {
  return absl::InvalidArgumentError(
      absl::StrCat("field \"", field, "\" ", rule));
}

}  // namespace

TrainableSelection::TrainableSelection(const TrainableSpec& spec,
                                       const LlamaModel& model,
                                       uint64_t run_seed)
    : spec_(spec),
      model_(model),
      seed_(spec.half_ft && spec.half_ft->seed != 0 ? spec.half_ft->seed
                                                    : run_seed),
      lisa_rng_(SeededRng(run_seed, kLisaStream)) {}

absl::StatusOr<std::unique_ptr<TrainableSelection>> TrainableSelection::Create(
    const TrainableSpec& spec, const LlamaModel& model, uint64_t run_seed) {
  RETURN_IF_ERROR(Validate(spec));
  const int L = static_cast<int>(model.layers().size());
  std::unique_ptr<TrainableSelection> selection(
      new TrainableSelection(spec, model, run_seed));
  if (spec.lisa && spec.lisa->activated_layers > L) {
    return Invalid("trainable.lisa.activated_layers",
                   absl::StrCat("is ", spec.lisa->activated_layers,
                                " but the model has ", L, " decoder layers"));
  }
  if (spec.half_ft &&
      HalfFtMatrixCounts(spec.half_ft->fraction, L).total() == 0) {
    return Invalid("trainable.half_ft.fraction",
                   absl::StrCat("is ", spec.half_ft->fraction, ": of the ",
                                (kAttentionMatrices + kMlpMatrices) * L,
                                " matrices of the model's ", L,
                                " decoder layers it trains none"));
  }
  if (spec.lisa || spec.half_ft) return selection;
  std::vector<int> layers(L);
  std::iota(layers.begin(), layers.end(), 0);
  if (!spec.layers.empty()) {
    ASSIGN_OR_RETURN(layers, ResolveLayerRanges(spec.layers, L,
                                                "field \"trainable.layers\""));
  }
  for (const auto& [name, tensor] : model.Weights(/*merge_lora=*/false)) {
    const auto [layer, path] = LayerOf(name);
    if (layer < 0 || !std::binary_search(layers.begin(), layers.end(), layer)) {
      continue;
    }
    if (spec.modules.empty() ||
        std::any_of(
            spec.modules.begin(), spec.modules.end(),
            [&](const std::string& m) { return HasComponent(path, m); })) {
      selection->fixed_.insert(name);
    }
  }
  if (selection->fixed_.empty()) {
    return Invalid("trainable.modules",
                   "names no tensor of the selected layers");
  }
  return selection;
}

std::set<std::string> TrainableSelection::LisaSet(
    const std::vector<int>& layers) const {
  std::set<std::string> set;
  for (const auto& [name, tensor] : model_.Weights(/*merge_lora=*/false)) {
    const int layer = LayerOf(name).first;
    if (layer < 0 ||
        std::find(layers.begin(), layers.end(), layer) != layers.end()) {
      set.insert(name);
    }
  }
  return set;
}

std::set<std::string> TrainableSelection::HalfFtSet(int selection) const {
  std::mt19937_64 rng = SeededRng(seed_, static_cast<uint32_t>(selection));
  const int L = static_cast<int>(model_.layers().size());
  std::vector<int> order(L);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int> rank(L);  // a layer's place in the shuffle
  for (int i = 0; i < L; ++i) rank[order[i]] = i;
  const HalfFtMatrices counts = HalfFtMatrixCounts(spec_.half_ft->fraction, L);
  std::set<std::string> set;
  const TensorMap weights = model_.Weights(/*merge_lora=*/false);
  for (int l = 0; l < L; ++l) {
    std::vector<std::string> attention = {"q_proj", "k_proj", "v_proj",
                                          "o_proj"};
    std::vector<std::string> mlp = {"gate_proj", "up_proj", "down_proj"};
    std::shuffle(attention.begin(), attention.end(), rng);
    std::shuffle(mlp.begin(), mlp.end(), rng);
    attention.resize(counts.attention / L +
                     (rank[l] >= L - counts.attention % L ? 1 : 0));
    mlp.resize(counts.mlp / L + (rank[l] < counts.mlp % L ? 1 : 0));
    for (const auto& [group, modules] :
         {std::pair<const char*, const std::vector<std::string>&>{"self_attn",
                                                                  attention},
          {"mlp", mlp}}) {
      for (const std::string& m : modules) {
        const std::string key =
            absl::StrCat("model.layers.", l, ".", group, ".", m, ".");
        set.insert(key + "weight");
        if (weights.contains(key + "bias")) set.insert(key + "bias");
      }
    }
  }
  if (spec_.half_ft->include_embeddings) {
    for (const auto& [name, tensor] : weights) {
      if (LayerOf(name).first < 0) set.insert(name);
    }
  }
  return set;
}

bool TrainableSelection::Advance(int64_t step, int epoch, int stage) {
  std::set<std::string> next = trained_;
  if (spec_.lisa) {
    if (step % spec_.lisa->interval_steps == 0 &&
        (draws_.empty() || draws_.back()["step"].get<int64_t>() != step)) {
      std::vector<int> order(model_.layers().size());
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), lisa_rng_);
      order.resize(spec_.lisa->activated_layers);
      std::sort(order.begin(), order.end());
      draws_.push_back({{"step", step}, {"layers", order}});
      next = LisaSet(order);
    }
  } else if (spec_.half_ft) {
    const int selection =
        spec_.half_ft->reselect == "epoch" ? epoch : stage;
    if (selection != selection_epoch_) {
      selection_epoch_ = selection;
      next = HalfFtSet(selection);
      selections_.push_back({{"epoch", selection}, {"tensors", next}});
    }
  } else {
    next = fixed_;
  }
  const bool changed = !started_ || next != trained_;
  started_ = true;
  trained_ = std::move(next);
  return changed;
}

void TrainableSelection::Apply(const LlamaModel& model) const {
  for (auto& [name, tensor] : model.Weights(/*merge_lora=*/false)) {
    const bool on = trained_.count(name) > 0;
    if (!on && tensor.grad().defined()) tensor.mutable_grad().reset();
    tensor.requires_grad_(on);
  }
}

Json TrainableSelection::State() const {
  int64_t trained = 0, total = 0, matrices = 0, trained_matrices = 0;
  for (const auto& [name, tensor] : model_.Weights(/*merge_lora=*/false)) {
    const bool on = trained_.count(name) > 0;
    total += tensor.numel();
    if (on) trained += tensor.numel();
    if (LayerOf(name).first >= 0 && tensor.dim() == 2) {
      matrices += tensor.numel();
      if (on) trained_matrices += tensor.numel();
    }
  }
  Json state = {{"kind", spec_.lisa      ? "lisa"
                         : spec_.half_ft ? "half_ft"
                                         : "layers"},
                {"trained", trained_},
                {"trained_parameters", trained},
                {"model_parameters", total},
                {"trained_fraction", static_cast<double>(trained) / total}};
  if (spec_.lisa) {
    std::ostringstream rng;
    rng << lisa_rng_;
    state["rng"] = rng.str();
    state["draws"] = draws_;
  }
  if (spec_.half_ft) {
    state["selections"] = selections_;
    state["matrix_fraction"] =
        static_cast<double>(trained_matrices) / std::max<int64_t>(matrices, 1);
  }
  return state;
}

absl::Status TrainableSelection::Restore(const Json& state) {
  auto bad = [](const std::string& field) {
    return absl::DataLossError(
        absl::StrCat("the checkpoint's trainable selection: field \"", field,
                     "\" is missing or malformed"));
  };
  const Json want_kind = State()["kind"];
  if (!state.is_object() || state.value("kind", Json()) != want_kind) {
    return bad("kind");
  }
  auto trained = state.find("trained");
  if (trained == state.end() || !trained->is_array()) return bad("trained");
  std::set<std::string> set;
  const TensorMap weights = model_.Weights(/*merge_lora=*/false);
  for (const Json& name : *trained) {
    if (!name.is_string() || !weights.contains(name.get<std::string>())) {
      return bad("trained");
    }
    set.insert(name.get<std::string>());
  }
  std::mt19937_64 rng = lisa_rng_;
  Json draws = Json::array(), selections = Json::array();
  int selection_epoch = -1;
  if (spec_.lisa) {
    std::istringstream in(state.value("rng", ""));
    in >> rng;
    if (in.fail()) return bad("rng");
    draws = state.value("draws", Json());
    if (!draws.is_array() || draws.empty() || !draws.back().contains("step") ||
        !draws.back()["step"].is_number_integer()) {
      return bad("draws");
    }
  }
  if (spec_.half_ft) {
    selections = state.value("selections", Json());
    if (!selections.is_array() || selections.empty() ||
        !selections.back().contains("epoch") ||
        !selections.back()["epoch"].is_number_integer()) {
      return bad("selections");
    }
    selection_epoch = selections.back()["epoch"].get<int>();
  }
  if (!spec_.lisa && !spec_.half_ft && set != fixed_) return bad("trained");
  trained_ = std::move(set);
  lisa_rng_ = rng;
  draws_ = std::move(draws);
  selections_ = std::move(selections);
  selection_epoch_ = selection_epoch;
  started_ = true;
  return absl::OkStatus();
}

}  // namespace lathe::engine
