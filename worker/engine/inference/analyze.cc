#include "worker/engine/inference/analyze.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/engine/adapters/adapter.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/data/curation.h"
#include "worker/engine/device/placement.h"
#include "worker/engine/inference/score.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

// A JSON number, or null for NaN (JSON has no NaN).
Json Number(double x) { return std::isnan(x) ? Json(nullptr) : Json(x); }

absl::Status CheckOptions(const AnalyzeSpec& spec) {
  const double lo = spec.loss_quantile_low, hi = spec.loss_quantile_high;
  if (!(0 <= lo && lo < hi && hi <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "loss quantiles: need 0 <= low < high <= 1, got ", lo, ", ", hi));
  }
  if (spec.select != AnalyzeSelection::kLossQuantile && (lo != 0 || hi != 1)) {
    return absl::InvalidArgumentError(
        "loss quantiles: they select by loss; another selection takes none");
  }
  if (spec.max_seq_len < 2) {
    return absl::InvalidArgumentError("max_seq_len: must be at least 2");
  }
  if (spec.batch_size < 1) {
    return absl::InvalidArgumentError("batch_size: must be at least 1");
  }
  if (spec.select == AnalyzeSelection::kGotD) {
    const GotDSelection& g = spec.got_d;
    if (g.target_file.empty()) {
      return absl::InvalidArgumentError("got_d target file: required");
    }
    if (g.budget < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("got_d budget: must be at least 1, got ", g.budget));
    }
    if (!(g.epsilon_fraction > 0) || !std::isfinite(g.epsilon_fraction)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "got_d epsilon_fraction: must be > 0, got ", g.epsilon_fraction));
    }
  }
  if (spec.select == AnalyzeSelection::kClear) {
    const ClearSelection& c = spec.clear;
    RETURN_IF_ERROR(CheckClearOptions(c.filter));
    if (c.filter.score == ClearScore::kConfidence) {
      if (c.consistency.samples < 1) {
        return absl::InvalidArgumentError("clear samples: must be at least 1");
      }
      if (!(c.consistency.temperature >= 0) ||
          c.consistency.max_new_tokens < 1) {
        return absl::InvalidArgumentError(
            "clear temperature must be >= 0 and max_new_tokens >= 1");
      }
      if (!c.answer_extractor.kind.empty()) {
        RETURN_IF_ERROR(ValidateExtractor(c.answer_extractor));
      }
    }
  }
  return absl::OkStatus();
}

// A data file's lines: each record, its line verbatim and its whole
// example (truncation is reported; the model sees what training keeps).
struct Lines {
  std::vector<DataRecord> records;
  std::vector<std::string> texts;
  std::vector<Example> examples;
  std::vector<std::vector<int32_t>> ids;
};

absl::StatusOr<Lines> ReadLines(
    const Tokenizer& tokenizer,
    const absl::StatusOr<ChatTemplate>& chat_template, const std::string& path,
    const std::string& name) {
  Lines out;
  ASSIGN_OR_RETURN(out.records, ReadDataJsonl(path, name, &out.texts));
  for (const DataRecord& r : out.records) {
    absl::StatusOr<Example> e = TokenizeRecord(
        tokenizer, chat_template.ok() ? &*chat_template : nullptr, r);
    if (!e.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(name.empty() ? path : name,
                                                     ": line ", r.line, ": ",
                                                     e.status().message()));
    }
    out.ids.push_back(e->ids);
    out.examples.push_back(*std::move(e));
  }
  return out;
}

// `examples` cut to max_seq_len tokens.
std::vector<Example> Truncated(std::vector<Example> examples, int max_seq_len) {
  for (Example& e : examples) {
    if (e.ids.size() > static_cast<size_t>(max_seq_len)) {
      e.ids.resize(max_seq_len);
      e.loss_mask.resize(max_seq_len);
    }
  }
  return examples;
}

}  // namespace

absl::StatusOr<AnalyzeSummary> AnalyzeData(
    const AnalyzeSpec& spec,
    const std::function<void(int64_t, int64_t)>& progress) {
  RETURN_IF_ERROR(CheckOptions(spec));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                   Tokenizer::Load(spec.model_dir));
  const absl::StatusOr<ChatTemplate> chat_template =
      ChatTemplateFor(*tokenizer, spec.chat_template);
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model,
                   LlamaModel::Load(spec.model_dir));
  ASSIGN_OR_RETURN(const Placement placement, ResolvePlacement(spec.device));
  model->Place(placement.device, placement.compute, placement.compute);
  if (!spec.adapter_dir.empty()) {
    RETURN_IF_ERROR(LoadTrained(*model, spec.adapter_dir).status());
  }

  ASSIGN_OR_RETURN(const Lines data,
                   ReadLines(*tokenizer, chat_template, spec.data_file,
                             spec.data_file_name));
  Lines valid, target;
  if (!spec.validation_file.empty()) {
    ASSIGN_OR_RETURN(valid,
                     ReadLines(*tokenizer, chat_template, spec.validation_file,
                               spec.validation_file_name));
  }
  const bool got_d = spec.select == AnalyzeSelection::kGotD;
  const bool clear = spec.select == AnalyzeSelection::kClear;
  if (got_d) {
    ASSIGN_OR_RETURN(
        target, ReadLines(*tokenizer, chat_template, spec.got_d.target_file,
                          spec.got_d.target_file_name));
  }
  const std::vector<DuplicateInfo> dups =
      FindDuplicates(data.ids, valid.ids, MinHashOptions{});
  const size_t n = data.examples.size();

  // Why each line is dropped before any selection by the model.
  std::vector<std::vector<std::string>> reasons(n);
  AnalyzeSummary summary{.examples = static_cast<int64_t>(n)};
  for (size_t i = 0; i < n; ++i) {
    const DuplicateInfo& d = dups[i];
    summary.truncated +=
        data.examples[i].ids.size() > static_cast<size_t>(spec.max_seq_len);
    if (d.exact_of >= 0) {
      ++summary.exact_duplicates;
      if (!spec.keep_duplicates) {
        reasons[i].push_back(absl::StrCat("exact_duplicate_of_line_",
                                          data.records[d.exact_of].line));
      }
    } else if (d.near_of >= 0) {
      ++summary.near_duplicates;
      if (!spec.keep_duplicates) {
        reasons[i].push_back(absl::StrCat("near_duplicate_of_line_",
                                          data.records[d.near_of].line));
      }
    }
    const int64_t v =
        d.validation_exact >= 0 ? d.validation_exact : d.validation_near;
    if (v >= 0) {
      ++summary.validation_overlaps;
      reasons[i].push_back(
          absl::StrCat("overlaps_validation_line_", valid.records[v].line));
    }
  }
  // GOT-D and CLEAR choose among the lines left.
  std::vector<size_t> left;
  for (size_t i = 0; i < n; ++i) {
    if (reasons[i].empty()) left.push_back(i);
  }
  const std::string& data_name =
      spec.data_file_name.empty() ? spec.data_file : spec.data_file_name;
  std::vector<ClearPair> pairs;
  if (clear) {
    for (size_t i : left) {
      absl::StatusOr<ClearPair> pair = ClearPairOf(
          *tokenizer, chat_template.ok() ? &*chat_template : nullptr,
          data.records[i]);
      if (!pair.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(data_name, ": line ", data.records[i].line, ": ",
                         pair.status().message()));
      }
      pairs.push_back(*std::move(pair));
    }
  }

  // The model's passes, counted as lines: the data, the target (GOT-D),
  // the confidence of each line left (CLEAR's kConfidence).
  const bool confidence =
      clear && spec.clear.filter.score == ClearScore::kConfidence;
  const int64_t total = static_cast<int64_t>(n + target.examples.size()) +
                        (confidence ? static_cast<int64_t>(left.size()) : 0);
  auto report_progress = [&](int64_t done) {
    if (progress) progress(done, total);
  };
  ASSIGN_OR_RETURN(
      const std::vector<ExampleScore> scores,
      ScoreExamples(*model, Truncated(data.examples, spec.max_seq_len),
                    spec.batch_size, tokenizer->pad_id(), got_d,
                    report_progress));
  std::vector<double> losses(n);
  for (size_t i = 0; i < n; ++i) losses[i] = scores[i].loss;

  std::vector<std::optional<double>> got_d_gradient(n);
  std::vector<std::optional<ClearVerdict>> verdicts(n);
  if (spec.select == AnalyzeSelection::kLossQuantile) {
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
    summary.loss_low = quantile(spec.loss_quantile_low);
    summary.loss_high = quantile(spec.loss_quantile_high);
    for (size_t i = 0; i < n; ++i) {
      if (!std::isnan(losses[i]) && losses[i] < summary.loss_low) {
        reasons[i].push_back(
            absl::StrCat("loss_below_quantile_", spec.loss_quantile_low));
      }
      if (!std::isnan(losses[i]) && losses[i] > summary.loss_high) {
        reasons[i].push_back(
            absl::StrCat("loss_above_quantile_", spec.loss_quantile_high));
      }
    }
  } else if (got_d) {
    if (left.size() < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          data_name,
          ": GOT-D needs at least 2 lines left after duplicates and overlaps, ",
          left.size(), " are"));
    }
    ASSIGN_OR_RETURN(
        const std::vector<ExampleScore> target_scores,
        ScoreExamples(*model, Truncated(target.examples, spec.max_seq_len),
                      spec.batch_size, tokenizer->pad_id(), /*embed=*/true,
                      [&](int64_t done) {
                        report_progress(static_cast<int64_t>(n) + done);
                      }));
    std::vector<std::vector<float>> candidates, targets;
    for (size_t i : left) candidates.push_back(scores[i].embedding);
    for (const ExampleScore& t : target_scores) targets.push_back(t.embedding);
    ASSIGN_OR_RETURN(
        const GotDShardedResult sharded,
        GotDSelectSharded(candidates, targets,
                          {.budget = spec.got_d.budget,
                           .epsilon_fraction = spec.got_d.epsilon_fraction},
                          spec.got_d.shard_size, spec.got_d.seed));
    const GotDResult& r = sharded.result;
    std::vector<bool> selected(left.size(), false);
    for (int64_t k : r.selected) selected[k] = true;
    for (size_t k = 0; k < left.size(); ++k) {
      got_d_gradient[left[k]] = r.gradient[k];
      if (!selected[k]) reasons[left[k]].push_back("got_d_not_selected");
    }
    summary.got_d_epsilon = r.epsilon;
    summary.got_d_iterations = sharded.max_iterations;
    summary.got_d_marginal_error = sharded.max_marginal_error;
    summary.got_d_shards = sharded.shards;
  } else {
    ConsistencyOptions consistency = spec.clear.consistency;
    consistency.extractor = spec.clear.answer_extractor.kind.empty()
                                ? nullptr
                                : &spec.clear.answer_extractor;
    const int64_t base = static_cast<int64_t>(n + target.examples.size());
    ASSIGN_OR_RETURN(
        const std::vector<ClearVerdict> v,
        ClearFilter(
            static_cast<int64_t>(left.size()),
            [&](int64_t k) -> absl::StatusOr<ClearSignals> {
              const size_t i = left[k];
              ClearSignals s{.log_likelihood = -losses[i]};
              if (confidence) {
                ASSIGN_OR_RETURN(
                    s.consistency,
                    Consistency(*model, *tokenizer, pairs[k],
                                static_cast<int64_t>(i), consistency));
                ASSIGN_OR_RETURN(s.reflection,
                                 Reflection(*model, *tokenizer, pairs[k]));
                report_progress(base + k + 1);
              }
              return s;
            },
            spec.clear.filter));
    for (size_t k = 0; k < left.size(); ++k) {
      for (const std::string& r : v[k].reasons) reasons[left[k]].push_back(r);
      verdicts[left[k]] = v[k];
    }
  }

  std::error_code ec;
  std::filesystem::create_directories(spec.out_dir, ec);
  std::ofstream report(spec.out_dir + "/report.jsonl"),
      selected(spec.out_dir + "/selected.jsonl");
  if (!report || !selected) {
    return absl::InternalError(absl::StrCat("cannot write to ", spec.out_dir));
  }
  auto line_of = [](int64_t i, const std::vector<DataRecord>& rs) {
    return i < 0 ? Json(nullptr) : Json(rs[i].line);
  };
  for (size_t i = 0; i < n; ++i) {
    const DuplicateInfo& d = dups[i];
    const int64_t v =
        d.validation_exact >= 0 ? d.validation_exact : d.validation_near;
    const bool keep = reasons[i].empty();
    summary.kept += keep;
    if (keep) selected << data.texts[i] << "\n";
    Json line = {{"line", data.records[i].line},
                 {"tokens", data.examples[i].ids.size()},
                 {"truncated", data.examples[i].ids.size() >
                                   static_cast<size_t>(spec.max_seq_len)},
                 {"loss", Number(losses[i])},
                 {"perplexity", Number(std::exp(losses[i]))},
                 {"exact_duplicate_of", line_of(d.exact_of, data.records)},
                 {"near_duplicate_of", line_of(d.near_of, data.records)},
                 {"near_jaccard", d.near_jaccard},
                 {"validation_overlap", line_of(v, valid.records)},
                 {"validation_jaccard",
                  d.validation_exact >= 0 ? 1.0 : d.validation_jaccard},
                 {"kept", keep},
                 {"reasons", reasons[i]}};
    if (got_d) {
      line["got_d_gradient"] =
          got_d_gradient[i] ? Number(*got_d_gradient[i]) : Json(nullptr);
    }
    if (clear) {
      const std::optional<ClearVerdict>& c = verdicts[i];
      line["clear_score"] = c ? Number(c->score) : Json(nullptr);
      if (confidence) {
        line["clear_consistency"] =
            c ? Json(c->signals.consistency) : Json(nullptr);
        line["clear_reflection"] =
            c ? Json(c->signals.reflection) : Json(nullptr);
      } else {
        line["clear_log_likelihood"] =
            c ? Number(c->signals.log_likelihood) : Json(nullptr);
      }
    }
    report << line.dump() << "\n";
  }
  report.close();
  selected.close();
  if (!report || !selected) {
    return absl::InternalError(
        absl::StrCat("writing to ", spec.out_dir, " failed"));
  }
  return summary;
}

}  // namespace lathe::engine
