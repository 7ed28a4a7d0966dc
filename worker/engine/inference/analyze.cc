#include "worker/engine/inference/analyze.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/data/curation.h"
#include "worker/engine/device/placement.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/reports/reports.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

// A JSON number, or null for NaN (JSON has no NaN).
Json Number(double x) { return std::isnan(x) ? Json(nullptr) : Json(x); }

}  // namespace

absl::StatusOr<AnalyzeSummary> AnalyzeData(
    const AnalyzeSpec& spec, const std::function<void(int64_t, int64_t)>& progress) {
  const double lo = spec.loss_quantile_low, hi = spec.loss_quantile_high;
  if (!(0 <= lo && lo < hi && hi <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss quantiles: need 0 <= low < high <= 1, got ", lo, ", ", hi));
  }
  if (spec.max_seq_len < 2) {
    return absl::InvalidArgumentError("max_seq_len: must be at least 2");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(spec.model_dir));
  const absl::StatusOr<ChatTemplate> chat_template =
      ChatTemplateFor(*tokenizer, spec.chat_template);
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model, LlamaModel::Load(spec.model_dir));
  ASSIGN_OR_RETURN(const Placement placement, ResolvePlacement(spec.device));
  model->Place(placement.device, placement.compute, placement.compute);

  // Each line's record and tokens, the whole example (truncation is
  // reported, the loss is over what training would keep).
  struct Lines {
    std::vector<DataRecord> records;
    std::vector<Example> examples;
    std::vector<std::vector<int32_t>> ids;
  };
  auto read = [&](const std::string& path, const std::string& name) -> absl::StatusOr<Lines> {
    Lines out;
    ASSIGN_OR_RETURN(out.records, ReadDataJsonl(path, name));
    for (const DataRecord& r : out.records) {
      absl::StatusOr<Example> e =
          TokenizeRecord(*tokenizer, chat_template.ok() ? &*chat_template : nullptr, r);
      if (!e.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(name.empty() ? path : name, ": line ",
                                                       r.line, ": ", e.status().message()));
      }
      out.ids.push_back(e->ids);
      out.examples.push_back(*std::move(e));
    }
    return out;
  };
  ASSIGN_OR_RETURN(const Lines data, read(spec.data_file, spec.data_file_name));
  Lines valid;
  if (!spec.validation_file.empty()) {
    ASSIGN_OR_RETURN(valid, read(spec.validation_file, spec.validation_file_name));
  }
  const std::vector<DuplicateInfo> dups = FindDuplicates(data.ids, valid.ids, MinHashOptions{});
  const size_t n = data.examples.size();
  std::vector<double> losses(n);
  for (size_t i = 0; i < n; ++i) {
    Example e = data.examples[i];
    if (e.ids.size() > static_cast<size_t>(spec.max_seq_len)) {
      e.ids.resize(spec.max_seq_len);
      e.loss_mask.resize(spec.max_seq_len);
    }
    const HeldOutLoss loss = HeldOutLossOf(*model, {e}, false, 1, tokenizer->pad_id());
    losses[i] = loss.tokens > 0 ? loss.loss : std::nan("");
    if (progress) progress(static_cast<int64_t>(i + 1), static_cast<int64_t>(n));
  }
  std::vector<double> sorted;
  for (double l : losses) {
    if (!std::isnan(l)) sorted.push_back(l);
  }
  std::sort(sorted.begin(), sorted.end());
  auto quantile = [&](double q) {
    if (sorted.empty()) return 0.0;
    const double at = q * (sorted.size() - 1);
    const size_t below = static_cast<size_t>(std::floor(at));
    const size_t above = std::min(below + 1, sorted.size() - 1);
    return sorted[below] + (at - below) * (sorted[above] - sorted[below]);
  };
  AnalyzeSummary summary{.examples = static_cast<int64_t>(n),
                         .loss_low = quantile(lo),
                         .loss_high = quantile(hi)};

  std::vector<std::string> lines;
  {
    std::ifstream in(spec.data_file);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
  }
  std::error_code ec;
  std::filesystem::create_directories(spec.out_dir, ec);
  std::ofstream report(spec.out_dir + "/report.jsonl"), selected(spec.out_dir + "/selected.jsonl");
  if (!report || !selected) {
    return absl::InternalError(absl::StrCat("cannot write to ", spec.out_dir));
  }
  auto line_of = [](int64_t i, const std::vector<DataRecord>& rs) {
    return i < 0 ? Json(nullptr) : Json(rs[i].line);
  };
  for (size_t i = 0; i < n; ++i) {
    const DuplicateInfo& d = dups[i];
    std::vector<std::string> reasons;
    const bool cut = data.examples[i].ids.size() > static_cast<size_t>(spec.max_seq_len);
    summary.truncated += cut;
    if (d.exact_of >= 0) {
      ++summary.exact_duplicates;
      if (!spec.keep_duplicates) {
        reasons.push_back(absl::StrCat("exact_duplicate_of_line_", data.records[d.exact_of].line));
      }
    } else if (d.near_of >= 0) {
      ++summary.near_duplicates;
      if (!spec.keep_duplicates) {
        reasons.push_back(absl::StrCat("near_duplicate_of_line_", data.records[d.near_of].line));
      }
    }
    const int64_t v = d.validation_exact >= 0 ? d.validation_exact : d.validation_near;
    if (v >= 0) {
      ++summary.validation_overlaps;
      reasons.push_back(absl::StrCat("overlaps_validation_line_", valid.records[v].line));
    }
    if (!std::isnan(losses[i]) && losses[i] < summary.loss_low) {
      reasons.push_back(absl::StrCat("loss_below_quantile_", lo));
    }
    if (!std::isnan(losses[i]) && losses[i] > summary.loss_high) {
      reasons.push_back(absl::StrCat("loss_above_quantile_", hi));
    }
    const bool keep = reasons.empty();
    summary.kept += keep;
    if (keep) selected << lines[data.records[i].line - 1] << "\n";
    report << Json{{"line", data.records[i].line},
                   {"tokens", data.examples[i].ids.size()},
                   {"truncated", cut},
                   {"loss", Number(losses[i])},
                   {"perplexity", Number(std::exp(losses[i]))},
                   {"exact_duplicate_of", line_of(d.exact_of, data.records)},
                   {"near_duplicate_of", line_of(d.near_of, data.records)},
                   {"near_jaccard", d.near_jaccard},
                   {"validation_overlap", line_of(v, valid.records)},
                   {"validation_jaccard", d.validation_exact >= 0 ? 1.0 : d.validation_jaccard},
                   {"kept", keep},
                   {"reasons", reasons}}
                  .dump()
           << "\n";
  }
  report.close();
  selected.close();
  if (!report || !selected) {
    return absl::InternalError(absl::StrCat("writing to ", spec.out_dir, " failed"));
  }
  return summary;
}

}  // namespace lathe::engine
