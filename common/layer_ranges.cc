#include "common/layer_ranges.h"

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/echo.h"

namespace lathe {
namespace {

// [first, last] of one entry; last < 0 for a band (resolved later).
struct Entry {
  int first = 0;
  int last = 0;
  int band = -1;  // index into kLayerBands
};

absl::StatusOr<Entry> ParseEntry(const std::string& text,
                                 const std::string& where) {
  for (size_t b = 0; b < std::size(kLayerBands); ++b) {
    if (text == kLayerBands[b]) return Entry{.band = static_cast<int>(b)};
  }
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", Echo(text),
                     "\" is not a layer index, a range A-B or one of ",
                     absl::StrJoin(kLayerBands, ", ")));
  };
  auto index = [](absl::string_view s, int* out) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
      return c >= '0' && c <= '9';
    }) && absl::SimpleAtoi(s, out);
  };
  std::vector<absl::string_view> parts = absl::StrSplit(text, '-');
  Entry entry;
  if (parts.size() == 1 && index(parts[0], &entry.first)) {
    entry.last = entry.first;
    return entry;
  }
  if (parts.size() == 2 && index(parts[0], &entry.first) &&
      index(parts[1], &entry.last)) {
    if (entry.first > entry.last) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": range \"", text, "\" ends before it starts"));
    }
    return entry;
  }
  return bad();
}

std::pair<int, int> BandRange(int band, int L) {
  const int q1 = L / 4, q2 = L / 2, q3 = 3 * L / 4;
  const std::pair<int, int> bands[] = {{0, q1}, {q1, q2}, {q2, q3}, {q3, L},
                                       {0, q2}, {q1, q3}, {q2, L}};
  return bands[band];  // [begin, end)
}

}  // namespace

absl::Status CheckLayerRanges(const std::vector<std::string>& ranges,
                              const std::string& field) {
  for (size_t i = 0; i < ranges.size(); ++i) {
    absl::StatusOr<Entry> entry =
        ParseEntry(ranges[i], absl::StrCat(field, "[", i, "]"));
    if (!entry.ok()) return entry.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int>> ResolveLayerRanges(
    const std::vector<std::string>& ranges, int num_layers,
    const std::string& field) {
  std::set<int> layers;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const std::string where = absl::StrCat(field, "[", i, "]");
    absl::StatusOr<Entry> entry = ParseEntry(ranges[i], where);
    if (!entry.ok()) return entry.status();
    int begin = entry->first, end = entry->last + 1;
    if (entry->band >= 0) {
      std::tie(begin, end) = BandRange(entry->band, num_layers);
      if (begin >= end) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": \"", ranges[i], "\" names no layer of a ",
                         num_layers, "-layer model"));
      }
    } else if (end > num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": layer ", end - 1, " does not exist; the model has ",
          num_layers, " layers (0-", num_layers - 1, ")"));
    }
    for (int l = begin; l < end; ++l) layers.insert(l);
  }
  return std::vector<int>(layers.begin(), layers.end());
}

}  // namespace lathe
