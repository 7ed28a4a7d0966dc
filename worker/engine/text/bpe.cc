#include "worker/engine/text/bpe.h"

#include <cstdio>
#include <functional>
#include <queue>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "worker/engine/text/pretokenize.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
         static_cast<uint32_t>(right);
}

size_t Utf8CharLength(unsigned char lead) {
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(
    const Json& model) {
  auto invalid = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", what));
  };
  if (!model.is_object() || model.value("type", "BPE") != "BPE") {
    return invalid("only \"model\": {\"type\": \"BPE\"} is supported");
  }
  for (const char* field :
       {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(field) && !model[field].is_null() &&
        !model[field].get<std::string>().empty()) {
      return invalid(absl::StrCat("model.", field, " is not supported"));
    }
  }
  auto out = std::unique_ptr<BpeModel>(new BpeModel());
  const Json vocab = model.value("vocab", Json::object());
  if (!vocab.is_object() || vocab.empty()) {
    return invalid("model.vocab must be a non-empty object");
  }
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() >= kMaxTokenIds) {
      return invalid(absl::StrCat("model.vocab[\"", token,
                                  "\"] is not an id below ", kMaxTokenIds));
    }
    const int32_t i = id.get<int32_t>();
    out->vocab_.emplace(token, i);
    if (out->id_to_token_.size() <= static_cast<size_t>(i)) {
      out->id_to_token_.resize(i + 1);
    }
    out->id_to_token_[i] = token;
  }
  const Json merges = model.value("merges", Json::array());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const Json& m = merges[rank];
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != s.npos) {
        return invalid(absl::StrCat("model.merges[", rank, "] \"", s,
                                    "\" is not \"left right\""));
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() &&
               m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return invalid(absl::StrCat("model.merges[", rank, "] is malformed"));
    }
    const int32_t a = out->TokenToId(left);
    const int32_t b = out->TokenToId(right);
    const int32_t merged = out->TokenToId(left + right);
    if (a < 0 || b < 0 || merged < 0) {
      return invalid(absl::StrCat("model.merges[", rank, "] (\"", left,
                                  "\", \"", right,
                                  "\") names a token not in the vocabulary"));
    }
    out->merges_.emplace(PairKey(a, b),
                         Merge{static_cast<int32_t>(rank), merged});
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    out->unk_id_ = out->TokenToId(model["unk_token"].get<std::string>());
  }
  out->fuse_unk_ = model.value("fuse_unk", false);
  out->byte_fallback_ = model.value("byte_fallback", false);
  out->ignore_merges_ = model.value("ignore_merges", false);
  return out;
}

int32_t BpeModel::TokenToId(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string& BpeModel::IdToToken(int32_t id) const {
  static const std::string* const kEmpty = new std::string();
  if (id < 0 || id >= vocab_size()) return *kEmpty;
  return id_to_token_[id];
}

absl::Status BpeModel::Tokenize(std::string_view word, bool byte_level,
                                std::vector<BpeToken>* out) const {
  if (word.empty()) return absl::OkStatus();
  // The model's view of each byte-level byte, or of each character.
  std::vector<std::string> units;
  std::vector<std::pair<size_t, size_t>> unit_ranges;
  for (size_t i = 0; i < word.size();) {
    const size_t n =
        byte_level ? 1 : std::min(Utf8CharLength(word[i]), word.size() - i);
    units.push_back(byte_level ? ByteLevelChar(word[i])
                               : std::string(word.substr(i, n)));
    unit_ranges.emplace_back(i, i + n);
    i += n;
  }
  if (ignore_merges_) {
    std::string whole;
    for (const std::string& u : units) whole += u;
    const int32_t id = TokenToId(whole);
    if (id >= 0) {
      out->push_back({id, 0, word.size()});
      return absl::OkStatus();
    }
  }

  struct Symbol {
    int32_t id;
    size_t begin, end;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  auto push = [&](int32_t id, size_t begin, size_t end) {
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({id, begin, end, index - 1, index + 1, true});
  };
  for (size_t u = 0; u < units.size(); ++u) {
    const auto [begin, end] = unit_ranges[u];
    const int32_t id = TokenToId(units[u]);
    if (id >= 0) {
      push(id, begin, end);
      continue;
    }
    if (byte_fallback_) {
      std::vector<int32_t> bytes;
      for (size_t i = begin; i < end; ++i) {
        char name[8];
        std::snprintf(name, sizeof(name), "<0x%02X>",
                      static_cast<unsigned char>(word[i]));
        bytes.push_back(TokenToId(name));
      }
      if (std::find(bytes.begin(), bytes.end(), -1) == bytes.end()) {
        for (size_t i = 0; i < bytes.size(); ++i) {
          push(bytes[i], begin + i, begin + i + 1);
        }
        continue;
      }
    }
    if (unk_id_ < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer.json: \"", units[u],
          "\" is not in the vocabulary and the model has no unk_token"));
    }
    if (fuse_unk_ && !symbols.empty() && symbols.back().id == unk_id_) {
      symbols.back().end = end;
    } else {
      push(unk_id_, begin, end);
    }
  }
  symbols.back().next = -1;

  // Lowest rank first, then leftmost, as Hugging Face's BPE word merge.
  using Candidate = std::tuple<int32_t, int, int32_t>;  // rank, pos, new id
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int pos) {
    if (pos < 0 || symbols[pos].next < 0) return;
    auto it =
        merges_.find(PairKey(symbols[pos].id, symbols[symbols[pos].next].id));
    if (it != merges_.end()) queue.emplace(it->second.rank, pos, it->second.id);
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) consider(i);
  while (!queue.empty()) {
    const auto [rank, pos, new_id] = queue.top();
    queue.pop();
    Symbol& left = symbols[pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    auto it = merges_.find(PairKey(left.id, right.id));
    if (it == merges_.end() || it->second.id != new_id) continue;
    left.id = new_id;
    left.end = right.end;
    left.next = right.next;
    right.alive = false;
    if (left.next >= 0) symbols[left.next].prev = pos;
    consider(left.prev);
    consider(pos);
  }
  for (const Symbol& s : symbols) {
    if (s.alive) out->push_back({s.id, s.begin, s.end});
  }
  return absl::OkStatus();
}

}  // namespace lathe::engine
