#include "worker/engine/adapters/s2ft.h"

#include <filesystem>
#include <functional>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/s2ft_selection.h"
#include "common/status_macros.h"
#include "worker/engine/model/model_config.h"
#include "worker/engine/model/model_export.h"
#include "worker/engine/model/weights.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

// The projections S²FT adapts and how: rows (outputs) or columns (inputs).
struct Target {
  const char* module;
  bool rows;
};
constexpr Target kTargets[] = {{"v_proj", true},
                               {"o_proj", false},
                               {"up_proj", true},
                               {"down_proj", false}};

int64_t SeedOf(const S2ftSpec& options, uint64_t run_seed) {
  return options.seed >= 0 ? options.seed : static_cast<int64_t>(run_seed);
}

S2ftShape ShapeOf(const ModelConfig& c) {
  return {.layers = c.num_hidden_layers,
          .heads = c.num_attention_heads,
          .kv_heads = c.num_key_value_heads,
          .intermediate = c.intermediate_size};
}

// The weight indices of `units` of `size` each (heads: head_dim rows or
// columns apiece; channels: one).
std::vector<int64_t> Expand(const std::vector<int64_t>& units, int64_t size) {
  std::vector<int64_t> out;
  out.reserve(units.size() * size);
  for (int64_t u : units) {
    for (int64_t d = 0; d < size; ++d) out.push_back(u * size + d);
  }
  return out;
}

// layer `i`'s slice indices for each target, in kTargets' order.
std::vector<std::vector<int64_t>> LayerIndices(const S2ftSelection& s,
                                               const ModelConfig& c, size_t i) {
  return {Expand(s.v_heads[i], c.head_dim), Expand(s.o_heads[i], c.head_dim),
          s.up_channels[i], s.down_channels[i]};
}

std::string SliceKey(size_t layer, const Target& t, const char* what) {
  return absl::StrCat("model.layers.", layer, ".",
                      std::string(ProjectionGroup(t.module)), ".", t.module,
                      t.rows ? ".rows." : ".cols.", what);
}

// FNV-1a 64 continued over `slice` rounded to bfloat16.
void Hash(const torch::Tensor& slice, uint64_t& h) {
  const torch::Tensor b =
      slice.to(torch::kCPU, torch::kFloat32).to(torch::kBFloat16).contiguous();
  const auto* bytes = static_cast<const unsigned char*>(b.data_ptr());
  for (size_t i = 0; i < b.nbytes(); ++i) h = (h ^ bytes[i]) * 0x100000001b3ULL;
}

// FNV-1a 64 over the base's selected slices (with `merged`, the slices with
// their deltas added, as a merged model holds them) at bfloat16 precision,
// in layer and kTargets order.
std::string SliceFingerprint(const LlamaModel& model, bool merged) {
  torch::NoGradGuard no_grad;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const DecoderLayer& layer : model.layers()) {
    for (const Target& t : kTargets) {
      const Linear& linear = *layer.Projection(t.module);
      if (!linear.s2_delta.defined()) continue;
      torch::Tensor slice =
          linear.weight.index_select(t.rows ? 0 : 1, linear.s2_index)
              .to(torch::kFloat32);
      if (merged) slice = slice + linear.s2_delta.to(torch::kFloat32);
      Hash(slice, h);
    }
  }
  return absl::StrFormat("%016x", h);
}

Json ModelShapeJson(const ModelConfig& c) {
  return {{"num_hidden_layers", c.num_hidden_layers},
          {"hidden_size", c.hidden_size},
          {"intermediate_size", c.intermediate_size},
          {"num_attention_heads", c.num_attention_heads},
          {"num_key_value_heads", c.num_key_value_heads},
          {"head_dim", c.head_dim}};
}

void SetSlice(Linear& linear, const std::vector<int64_t>& indices, bool rows,
              torch::Tensor delta) {
  linear.s2_index =
      torch::tensor(indices, torch::kInt64).to(linear.weight.device());
  linear.s2_delta = std::move(delta);
  linear.s2_rows = rows;
}

}  // namespace

absl::Status AttachS2ft(LlamaModel& model, const S2ftSpec& options,
                        uint64_t run_seed) {
  RETURN_IF_ERROR(Validate(AdapterSpec(options)));
  const ModelConfig& c = model.config();
  const S2ftSelection selection = SelectS2ft(ShapeOf(c),
                                             {.v_ratio = options.v_ratio,
                                              .o_ratio = options.o_ratio,
                                              .u_ratio = options.u_ratio,
                                              .d_ratio = options.d_ratio},
                                             SeedOf(options, run_seed));
  if (selection.Count() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "field \"adapter.d_ratio\": the ratios select nothing of this model (",
        c.num_hidden_layers, " layers of ", c.intermediate_size,
        " FFN channels, ", c.num_attention_heads, " heads and ",
        c.num_key_value_heads,
        " KV heads; each count is int(units x ratio)); raise a ratio"));
  }
  for (size_t i = 0; i < model.layers().size(); ++i) {
    const std::vector<std::vector<int64_t>> indices =
        LayerIndices(selection, c, i);
    for (size_t t = 0; t < std::size(kTargets); ++t) {
      if (indices[t].empty()) continue;
      Linear& linear = *model.layers()[i].Projection(kTargets[t].module);
      const int64_t k = static_cast<int64_t>(indices[t].size());
      const auto on_device = torch::TensorOptions()
                                 .dtype(torch::kFloat32)
                                 .device(linear.weight.device());
      const std::vector<int64_t> shape =
          kTargets[t].rows ? std::vector<int64_t>{k, linear.weight.size(1)}
                           : std::vector<int64_t>{linear.weight.size(0), k};
      SetSlice(linear, indices[t], kTargets[t].rows,
               torch::zeros(shape, on_device).requires_grad_(true));
    }
  }
  return absl::OkStatus();
}

TensorMap S2ftParameters(const LlamaModel& model) {
  TensorMap params;
  for (size_t i = 0; i < model.layers().size(); ++i) {
    for (const Target& t : kTargets) {
      const Linear& linear = *model.layers()[i].Projection(t.module);
      if (linear.s2_delta.defined())
        params[SliceKey(i, t, "delta")] = linear.s2_delta;
    }
  }
  return params;
}

absl::Status SaveS2ft(const LlamaModel& model, const S2ftSpec& options,
                      uint64_t run_seed, const std::string& base_model_name,
                      const std::string& dir) {
  TensorMap tensors;
  int64_t trainable = 0;
  for (size_t i = 0; i < model.layers().size(); ++i) {
    for (const Target& t : kTargets) {
      const Linear& linear = *model.layers()[i].Projection(t.module);
      if (!linear.s2_delta.defined()) continue;
      tensors[SliceKey(i, t, "index")] = linear.s2_index;
      tensors[SliceKey(i, t, "delta")] = linear.s2_delta;
      trainable += linear.s2_delta.numel();
    }
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", dir, ": ", ec.message()));
  }
  RETURN_IF_ERROR(SaveSafetensors(absl::StrCat(dir, "/", kS2ftWeightsFile),
                                  tensors, {{"format", "pt"}}));
  const Json config = {{"format", "lathe-s2ft"},
                       {"version", 1},
                       {"d_ratio", options.d_ratio},
                       {"u_ratio", options.u_ratio},
                       {"o_ratio", options.o_ratio},
                       {"v_ratio", options.v_ratio},
                       {"seed", SeedOf(options, run_seed)},
                       {"base_model_name_or_path", base_model_name},
                       {"model", ModelShapeJson(model.config())},
                       {"base_fingerprint", SliceFingerprint(model, false)},
                       {"merged_fingerprint", SliceFingerprint(model, true)},
                       {"trainable_parameters", trainable}};
  return WriteJsonFile(absl::StrCat(dir, "/", kS2ftConfigFile), config);
}

namespace {

// One adapted weight of a diff: its slots and their change.
struct Slice {
  size_t layer = 0;
  const Target* target = nullptr;
  std::string weight;   // "model.layers.0.mlp.down_proj.weight"
  torch::Tensor index;  // int64 [k]
  torch::Tensor delta;  // float32
};

// The diff in `dir` for a model of `config`: its settings and its slices
// in layer and kTargets order, each index checked against `extent(weight,
// dim)` (the weight's size along the slice's dimension) and each delta's
// shape. Errors as LoadS2ft.
absl::StatusOr<std::vector<Slice>> ReadDiff(
    const std::string& dir, const ModelConfig& config,
    const std::function<
        absl::StatusOr<std::vector<int64_t>>(const std::string&)>& shape_of,
    S2ftSpec* options, Json* manifest) {
  const std::string config_path = absl::StrCat(dir, "/", kS2ftConfigFile);
  const std::string weights_path = absl::StrCat(dir, "/", kS2ftWeightsFile);
  ASSIGN_OR_RETURN(*manifest, ReadJsonFile(config_path));
  const Json& m = *manifest;
  auto bad = [&](const std::string& field, const std::string& problem) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": field \"", field, "\" ", problem));
  };
  if (!m.is_object() || m.value("format", "") != "lathe-s2ft") {
    return bad("format",
               "must be \"lathe-s2ft\" (is this an S²FT diff folder?)");
  }
  if (!m.contains("version") || m["version"] != 1)
    return bad("version", "must be 1");
  for (auto [field, ratio] : {std::pair{"d_ratio", &options->d_ratio},
                              std::pair{"u_ratio", &options->u_ratio},
                              std::pair{"o_ratio", &options->o_ratio},
                              std::pair{"v_ratio", &options->v_ratio}}) {
    if (!m.contains(field) || !m[field].is_number())
      return bad(field, "must be a number");
    *ratio = m[field].get<double>();
  }
  if (!m.contains("seed") || !m["seed"].is_number_integer() ||
      m["seed"].get<int64_t>() < 0) {
    return bad("seed", "must be a non-negative integer");
  }
  options->seed = m["seed"].get<int64_t>();
  if (absl::Status valid = Validate(AdapterSpec(*options)); !valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": ", valid.message()));
  }
  const Json shape = ModelShapeJson(config);
  if (!m.contains("model") || m["model"] != shape) {
    return bad("model", absl::StrCat("is ", m.value("model", Json()).dump(),
                                     " but the base model is ", shape.dump(),
                                     ": the diff was made on another model"));
  }
  ASSIGN_OR_RETURN(TensorMap tensors, LoadSafetensors(weights_path, /*int64_indices=*/true));
  std::vector<Slice> slices;
  for (size_t i = 0; i < static_cast<size_t>(config.num_hidden_layers); ++i) {
    for (const Target& t : kTargets) {
      const std::string index_key = SliceKey(i, t, "index");
      const std::string delta_key = SliceKey(i, t, "delta");
      const Target other{t.module, !t.rows};
      for (const char* what : {"index", "delta"}) {
        if (tensors.count(SliceKey(i, other, what)) != 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              weights_path, ": tensor \"", SliceKey(i, other, what),
              "\": ", t.module, " is adapted by ", t.rows ? "rows" : "columns",
              " only"));
        }
      }
      const bool has_index = tensors.count(index_key) != 0;
      const bool has_delta = tensors.count(delta_key) != 0;
      if (!has_index && !has_delta) continue;
      if (!has_index || !has_delta) {
        return absl::InvalidArgumentError(absl::StrCat(
            weights_path, ": tensor \"", has_index ? delta_key : index_key,
            "\" is missing (an index and a delta come together)"));
      }
      Slice slice{.layer = i, .target = &t};
      slice.weight = absl::StrCat("model.layers.", i, ".",
                                  std::string(ProjectionGroup(t.module)), ".",
                                  t.module, ".weight");
      ASSIGN_OR_RETURN(const std::vector<int64_t> w, shape_of(slice.weight));
      const int64_t dim = t.rows ? 0 : 1;
      const torch::Tensor index = tensors[index_key];
      if (index.scalar_type() != torch::kInt64 || index.dim() != 1 ||
          index.numel() == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(weights_path, ": tensor \"", index_key,
                         "\" must be a non-empty I64 vector"));
      }
      const int64_t* idx = index.data_ptr<int64_t>();
      for (int64_t j = 0; j < index.numel(); ++j) {
        if (idx[j] < 0 || idx[j] >= w[dim] || (j > 0 && idx[j] <= idx[j - 1])) {
          return absl::InvalidArgumentError(absl::StrCat(
              weights_path, ": tensor \"", index_key, "\" entry ", j, " (",
              idx[j], ") is out of 0..", w[dim] - 1, " or not ascending"));
        }
      }
      const int64_t k = index.numel();
      ASSIGN_OR_RETURN(slice.delta,
                       TakeTensor(tensors, delta_key,
                                  t.rows ? std::vector<int64_t>{k, w[1]}
                                         : std::vector<int64_t>{w[0], k},
                                  weights_path));
      slice.index = index;
      tensors.erase(index_key);
      slices.push_back(std::move(slice));
    }
  }
  if (!tensors.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(weights_path, ": tensor \"", tensors.begin()->first,
                     "\" is not a slice of this model"));
  }
  return slices;
}

// FAILED_PRECONDITION unless `fingerprint` is the manifest's base (or,
// reverting, merged) fingerprint.
absl::Status CheckFingerprint(const Json& manifest, const std::string& dir,
                              const std::string& fingerprint, bool revert) {
  const char* key = revert ? "merged_fingerprint" : "base_fingerprint";
  if (manifest.value(key, "") == fingerprint) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      dir, "/", kS2ftConfigFile,
      ": the model's selected weights have fingerprint ", fingerprint,
      " but the diff expects ", manifest.value(key, Json("")).dump(),
      revert ? " (revert a model this diff was applied to)"
             : absl::StrCat(
                   " (apply it to the base it was trained on: ",
                   manifest.value("base_model_name_or_path", Json("")).dump(),
                   ")")));
}

}  // namespace

absl::StatusOr<S2ftSpec> LoadS2ft(LlamaModel& model, const std::string& dir,
                                  bool negate) {
  S2ftSpec options;
  Json manifest;
  const TensorMap weights = model.Weights(/*merge_lora=*/false);
  ASSIGN_OR_RETURN(
      std::vector<Slice> slices,
      ReadDiff(
          dir, model.config(),
          [&](const std::string& name) -> absl::StatusOr<std::vector<int64_t>> {
            return weights.at(name).sizes().vec();
          },
          &options, &manifest));
  torch::NoGradGuard no_grad;
  for (Slice& slice : slices) {
    Linear& linear =
        *model.layers()[slice.layer].Projection(slice.target->module);
    const std::vector<int64_t> idx(
        slice.index.data_ptr<int64_t>(),
        slice.index.data_ptr<int64_t>() + slice.index.numel());
    SetSlice(linear, idx, slice.target->rows,
             (negate ? -slice.delta : slice.delta).to(linear.weight.device()));
  }
  RETURN_IF_ERROR(CheckFingerprint(
      manifest, dir, SliceFingerprint(model, /*merged=*/false), negate));
  return options;
}

namespace {

// ApplyS2ftDiff, also giving the fingerprint of the written model's slots
// (as SliceFingerprint computes it) in *written.
absl::Status ApplyDiff(const std::string& model_dir,
                       const std::string& diff_dir, const std::string& out_dir,
                       bool revert, std::string* written) {
  // Tensor by tensor from the base's files (memory-mapped), in float32,
  // rounded once to the base's dtype: the base's weights exactly where the
  // diff has no slot, whatever precision training held them in.
  ASSIGN_OR_RETURN(const ModelConfig config, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWeightsReader> reader,
                   ModelWeightsReader::Open(model_dir));
  ASSIGN_OR_RETURN(const torch::ScalarType dtype, ModelWeightsDtype(model_dir));
  S2ftSpec options;
  Json manifest;
  ASSIGN_OR_RETURN(
      const std::vector<Slice> slices,
      ReadDiff(
          diff_dir, config,
          [&](const std::string& name) -> absl::StatusOr<std::vector<int64_t>> {
            auto it = reader->shapes().find(name);
            if (it == reader->shapes().end() || it->second.size() != 2) {
              return absl::InvalidArgumentError(absl::StrCat(
                  model_dir, ": the base has no matrix \"", name, "\""));
            }
            return it->second;
          },
          &options, &manifest));
  std::map<std::string, const Slice*> by_weight;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const Slice& slice : slices) {
    by_weight[slice.weight] = &slice;
    ASSIGN_OR_RETURN(const torch::Tensor w, reader->Read(slice.weight));
    Hash(w.index_select(slice.target->rows ? 0 : 1, slice.index), h);
  }
  RETURN_IF_ERROR(CheckFingerprint(manifest, diff_dir,
                                   absl::StrFormat("%016x", h), revert));
  TensorMap out;
  for (const auto& [name, shape] : reader->shapes()) {
    ASSIGN_OR_RETURN(torch::Tensor t, reader->Read(name));
    if (auto it = by_weight.find(name); it != by_weight.end()) {
      const Slice& s = *it->second;
      t.index_add_(s.target->rows ? 0 : 1, s.index,
                   revert ? -s.delta : s.delta);
    }
    out[name] = t.to(dtype);
  }
  uint64_t w = 0xcbf29ce484222325ULL;
  for (const Slice& slice : slices) {
    Hash(
        out[slice.weight].index_select(slice.target->rows ? 0 : 1, slice.index),
        w);
  }
  *written = absl::StrFormat("%016x", w);
  RETURN_IF_ERROR(CopyModelFolderFiles(model_dir, out_dir));
  // A merged folder (an S²FT job's result) carries its diff: the copy of
  // its files must not.
  std::error_code ec;
  if (std::filesystem::exists(absl::StrCat(model_dir, "/", kS2ftConfigFile)) &&
      std::filesystem::path(out_dir).lexically_normal() !=
          std::filesystem::path(diff_dir).lexically_normal()) {
    std::filesystem::remove(absl::StrCat(out_dir, "/", kS2ftConfigFile), ec);
  }
  return SaveSafetensors(absl::StrCat(out_dir, "/model.safetensors"), out,
                         {{"format", "pt"}}, dtype);
}

}  // namespace

absl::Status ApplyS2ftDiff(const std::string& model_dir,
                           const std::string& diff_dir,
                           const std::string& out_dir, bool revert) {
  std::string written;
  return ApplyDiff(model_dir, diff_dir, out_dir, revert, &written);
}

absl::Status ExportS2ftMerged(const std::string& model_dir,
                              const std::string& dir) {
  // Read first: copying the base's files may bring an older diff's.
  const std::string path = absl::StrCat(dir, "/", kS2ftConfigFile);
  ASSIGN_OR_RETURN(Json manifest, ReadJsonFile(path));
  std::string merged;
  RETURN_IF_ERROR(ApplyDiff(model_dir, dir, dir, /*revert=*/false, &merged));
  manifest["merged_fingerprint"] = merged;
  return WriteJsonFile(path, manifest);
}

}  // namespace lathe::engine
