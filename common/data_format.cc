#include "common/data_format.h"

#include <bitset>
#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace lathe {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(
      field.empty() ? std::string(what) : absl::StrCat(field, ": ", what));
}

// At most 40 bytes of `s` (cut at a UTF-8 boundary), escaped, for a message.
std::string Quote(absl::string_view s) {
  constexpr size_t kMax = 40;
  bool cut = s.size() > kMax;
  if (cut) {
    size_t n = kMax;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
    s = s.substr(0, n);
  }
  return absl::StrCat("\"", absl::CHexEscape(s), cut ? "\"..." : "\"");
}

enum TopKey {
  kMessagesKey,
  kPromptKey,
  kCompletionKey,
  kTextKey,
  kInputKey,
  kPreferredKey,
  kNonPreferredKey,
  kTopKeys
};
constexpr const char* kTopKeyNames[kTopKeys] = {
    "messages", "prompt",           "completion",          "text",
    "input",    "preferred_output", "non_preferred_output"};
// The message arrays of a line: a chat line's, and a preference line's
// prompt and two outputs.
enum List { kChatList, kInputList, kPreferredList, kNonPreferredList, kLists };
constexpr const char* kListNames[kLists] = {
    "messages", "input.messages", "preferred_output", "non_preferred_output"};
enum MessageKey { kRoleKey, kContentKey, kWeightKey, kMessageKeys };
constexpr const char* kMessageKeyNames[kMessageKeys] = {"role", "content",
                                                        "weight"};

template <size_t N>
int KeyIndex(const char* const (&names)[N], absl::string_view key) {
  for (size_t i = 0; i < N; ++i) {
    if (key == names[i]) return static_cast<int>(i);
  }
  return -1;
}

// nlohmann's SAX interface: takes the events of one line, keeps the fields
// of the formats and nothing of any other key's value. Each handler returns
// false to stop the parse at the first problem, which error() then names.
class LineHandler {
 public:
  // `keep_messages`: fill DataExample::messages (else only count them).
  explicit LineHandler(bool keep_messages) : keep_messages_(keep_messages) {}

  enum class Kind { kNull, kBool, kNumber, kInteger, kString, kObject, kArray };

  // The SAX events (signatures fixed by nlohmann::json::sax_parse).
  bool null() { return Value(Kind::kNull); }
  bool boolean(bool) { return Value(Kind::kBool); }
  bool number_integer(Json::number_integer_t v) {
    return Value(Kind::kInteger, nullptr, v);
  }
  bool number_unsigned(Json::number_unsigned_t v) {
    return v <= INT64_MAX
               ? Value(Kind::kInteger, nullptr, static_cast<int64_t>(v))
               : Value(Kind::kNumber);
  }
  bool number_float(Json::number_float_t, const Json::string_t&) {
    return Value(Kind::kNumber);
  }
  bool string(Json::string_t& s) { return Value(Kind::kString, &s); }
  bool binary(Json::binary_t&) { return Value(Kind::kNull); }
  bool start_object(std::size_t) { return Value(Kind::kObject); }
  bool start_array(std::size_t) { return Value(Kind::kArray); }
  bool end_object() { return Close(); }
  bool end_array() { return Close(); }
  bool key(Json::string_t& k) { return Key(k); }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception&) {
    error_ = FieldError("", absl::StrCat("not valid JSON (or not valid UTF-8) "
                                         "near byte ",
                                         position));
    return false;
  }

  // After the parse: the example, or why the line is bad.
  absl::StatusOr<DataExample> Result();

 private:
  enum class State {
    kStart,         // before the top-level value
    kTop,           // in the top-level object, before a key or its end
    kTopValue,      // after a top-level key of a format
    kInput,         // in "input", before a key or its end
    kInputValue,    // after "input"'s "messages" key
    kMessages,      // in a message array, before an element or its end
    kMessage,       // in a message, before a key or its end
    kMessageValue,  // after a message key
    kDone,          // after the top-level object
  };

  bool Fail(absl::string_view field, absl::string_view what) {
    error_ = FieldError(field, what);
    return false;
  }
  std::string MessageField(int key = -1) const {
    return key < 0 ? absl::StrCat(kListNames[list_], "[", messages_[list_],
                                  "]")
                   : absl::StrCat(kListNames[list_], "[", messages_[list_],
                                  "].", kMessageKeyNames[key]);
  }
  // Starts reading the message array `list`, whose value is of `kind`.
  bool OpenList(List list, Kind kind);
  bool Value(Kind kind, std::string* s = nullptr, int64_t integer = 0);
  bool TopValue(Kind kind, std::string* s);
  bool MessageValue(Kind kind, std::string* s, int64_t integer);
  bool Key(const std::string& k);
  bool Close();
  bool EndMessage();

  const bool keep_messages_;
  State state_ = State::kStart;
  int skip_depth_ = 0;      // > 0 inside a skipped object or array
  bool skip_next_ = false;  // the next value is an unknown key's
  int key_ = -1;            // the TopKey or MessageKey whose value is next
  std::bitset<kTopKeys> top_seen_;
  std::bitset<kMessageKeys> message_seen_;
  bool input_messages_seen_ = false;
  List list_ = kChatList;  // the array being read
  DataMessage message_;    // the message being read
  int64_t messages_[kLists] = {};  // messages read, per array
  Role last_input_role_ = Role::kUser;
  bool trained_assistant_ = false;
  DataExample example_;
  absl::Status error_;
};

bool LineHandler::Value(Kind kind, std::string* s, int64_t integer) {
  const bool opens = kind == Kind::kObject || kind == Kind::kArray;
  if (skip_depth_ > 0) {
    skip_depth_ += opens;
    return true;
  }
  if (skip_next_) {
    skip_next_ = false;
    skip_depth_ = opens;
    return true;
  }
  switch (state_) {
    case State::kStart:
      if (kind != Kind::kObject) return Fail("", "expected a JSON object");
      state_ = State::kTop;
      return true;
    case State::kTopValue:
      state_ = State::kTop;
      return TopValue(kind, s);
    case State::kInputValue:
      state_ = State::kInput;
      return OpenList(kInputList, kind);
    case State::kMessages:
      if (kind != Kind::kObject)
        return Fail(MessageField(), "expected an object");
      message_ = DataMessage();
      message_seen_.reset();
      state_ = State::kMessage;
      return true;
    case State::kMessageValue:
      state_ = State::kMessage;
      return MessageValue(kind, s, integer);
    case State::kTop:
    case State::kInput:
    case State::kMessage:
    case State::kDone:
      break;
  }
  return Fail("", "unexpected value");  // the parser sends none here
}

bool LineHandler::OpenList(List list, Kind kind) {
  if (kind != Kind::kArray) {
    return Fail(kListNames[list],
                list == kChatList || list == kInputList
                    ? "expected a non-empty array"
                    : "expected an array of one assistant message");
  }
  list_ = list;
  state_ = State::kMessages;
  return true;
}

bool LineHandler::TopValue(Kind kind, std::string* s) {
  switch (key_) {
    case kMessagesKey:
      return OpenList(kChatList, kind);
    case kPreferredKey:
      return OpenList(kPreferredList, kind);
    case kNonPreferredKey:
      return OpenList(kNonPreferredList, kind);
    case kInputKey:
      if (kind != Kind::kObject) {
        return Fail("input", "expected an object {\"messages\": [...]}");
      }
      state_ = State::kInput;
      return true;
    case kPromptKey:
    case kCompletionKey:
      if (kind != Kind::kString) {
        return Fail(kTopKeyNames[key_], "missing or not a string");
      }
      (key_ == kPromptKey ? example_.prompt : example_.completion) =
          std::move(*s);
      return true;
    default:
      if (kind != Kind::kString) {
        return Fail("text", "must be a non-empty string");
      }
      example_.text = std::move(*s);
      return true;
  }
}

bool LineHandler::MessageValue(Kind kind, std::string* s, int64_t integer) {
  switch (key_) {
    case kRoleKey:
      if (kind != Kind::kString) {
        return Fail(MessageField(kRoleKey), "missing or not a string");
      }
      if (*s == "system") {
        message_.role = Role::kSystem;
      } else if (*s == "user") {
        message_.role = Role::kUser;
      } else if (*s == "assistant") {
        message_.role = Role::kAssistant;
      } else {
        return Fail(MessageField(kRoleKey),
                    absl::StrCat("unknown role ", Quote(*s),
                                 " (expected system, user or assistant)"));
      }
      return true;
    case kContentKey:
      if (kind != Kind::kString) {
        return Fail(MessageField(kContentKey), "missing or not a string");
      }
      message_.content = std::move(*s);
      return true;
    default:
      if (kind != Kind::kInteger || (integer != 0 && integer != 1)) {
        return Fail(MessageField(kWeightKey), "must be 0 or 1");
      }
      message_.train = integer == 1;
      return true;
  }
}

bool LineHandler::Key(const std::string& k) {
  if (skip_depth_ > 0) return true;
  if (state_ == State::kTop) {
    key_ = KeyIndex(kTopKeyNames, k);
    if (key_ < 0) {
      skip_next_ = true;
      return true;
    }
    if (top_seen_[key_]) return Fail(k, "given twice");
    top_seen_[key_] = true;
    state_ = State::kTopValue;
    return true;
  }
  if (state_ == State::kInput) {
    if (k != "messages") {  // "tools", "parallel_tool_calls", ...
      skip_next_ = true;
      return true;
    }
    if (input_messages_seen_) return Fail("input.messages", "given twice");
    input_messages_seen_ = true;
    state_ = State::kInputValue;
    return true;
  }
  key_ = KeyIndex(kMessageKeyNames, k);
  if (key_ < 0) {
    skip_next_ = true;
    return true;
  }
  if (message_seen_[key_]) return Fail(MessageField(key_), "given twice");
  message_seen_[key_] = true;
  state_ = State::kMessageValue;
  return true;
}

bool LineHandler::Close() {
  if (skip_depth_ > 0) {
    --skip_depth_;
    return true;
  }
  switch (state_) {
    case State::kTop:
      state_ = State::kDone;
      return true;
    case State::kInput:
      state_ = State::kTop;
      return true;
    case State::kMessages:
      state_ = list_ == kInputList ? State::kInput : State::kTop;
      return true;
    case State::kMessage:
      state_ = State::kMessages;
      return EndMessage();
    default:
      return Fail("", "unexpected end");  // the parser sends none here
  }
}

bool LineHandler::EndMessage() {
  if (!message_seen_[kRoleKey]) {
    return Fail(MessageField(kRoleKey), "missing or not a string");
  }
  if (!message_seen_[kContentKey]) {
    return Fail(MessageField(kContentKey), "missing or not a string");
  }
  const bool assistant = message_.role == Role::kAssistant;
  if (list_ != kChatList) {
    if (message_seen_[kWeightKey]) {
      return Fail(MessageField(kWeightKey),
                  "not used in preference lines (the outputs are what is "
                  "trained)");
    }
    if (list_ == kInputList) {
      last_input_role_ = message_.role;
    } else {
      if (messages_[list_] > 0) {
        return Fail(kListNames[list_],
                    "expected exactly one assistant message");
      }
      if (!assistant) {
        return Fail(MessageField(kRoleKey),
                    absl::StrCat("must be \"assistant\", not \"",
                                 RoleName(message_.role), "\""));
      }
      if (message_.content.empty()) {
        return Fail(MessageField(kContentKey),
                    "empty assistant message (nothing to compare)");
      }
    }
    ++messages_[list_];
    if (keep_messages_) {
      (list_ == kInputList       ? example_.messages
       : list_ == kPreferredList ? example_.preferred
                                 : example_.non_preferred)
          .push_back(std::move(message_));
    }
    return true;
  }
  if (message_seen_[kWeightKey] && !assistant) {
    return Fail(MessageField(kWeightKey),
                "only assistant messages take a weight");
  }
  if (assistant && message_.train && message_.content.empty()) {
    return Fail(MessageField(kContentKey),
                "empty assistant message (nothing to learn)");
  }
  trained_assistant_ = trained_assistant_ || (assistant && message_.train);
  ++messages_[kChatList];
  if (keep_messages_) example_.messages.push_back(std::move(message_));
  return true;
}

absl::StatusOr<DataExample> LineHandler::Result() {
  if (!error_.ok()) return error_;
  const bool chat = top_seen_[kMessagesKey];
  const bool prompt_completion =
      top_seen_[kPromptKey] || top_seen_[kCompletionKey];
  const bool text = top_seen_[kTextKey];
  const bool preference = top_seen_[kInputKey] || top_seen_[kPreferredKey] ||
                          top_seen_[kNonPreferredKey];
  if (chat + prompt_completion + text + preference > 1) {
    std::vector<std::string> keys;
    if (chat) keys.push_back("\"messages\"");
    if (prompt_completion) {
      keys.push_back(top_seen_[kPromptKey] ? "\"prompt\"" : "\"completion\"");
    }
    if (text) keys.push_back("\"text\"");
    if (preference) {
      keys.push_back(top_seen_[kInputKey]       ? "\"input\""
                     : top_seen_[kPreferredKey] ? "\"preferred_output\""
                                                : "\"non_preferred_output\"");
    }
    return FieldError(
        "", absl::StrCat("ambiguous: holds ", keys[0], " and ", keys[1],
                         " (a line is chat, prompt/completion, text or "
                         "preference, not two of them)"));
  }
  if (preference) {
    example_.format = DataFormat::kPreference;
    if (!top_seen_[kInputKey]) {
      return FieldError("input", "missing (expected {\"messages\": [...]})");
    }
    if (messages_[kInputList] == 0) {
      return FieldError("input.messages", "expected a non-empty array");
    }
    if (last_input_role_ == Role::kAssistant) {
      return FieldError(
          absl::StrCat("input.messages[", messages_[kInputList] - 1, "]"),
          "the prompt ends with an assistant message; the outputs are the "
          "assistant's reply to the last user message");
    }
    for (List list : {kPreferredList, kNonPreferredList}) {
      if (messages_[list] != 1) {
        return FieldError(kListNames[list],
                          "expected exactly one assistant message");
      }
    }
    return std::move(example_);
  }
  if (chat) {
    example_.format = DataFormat::kChat;
    if (messages_[kChatList] == 0) {
      return FieldError("messages", "expected a non-empty array");
    }
    if (!trained_assistant_) {
      return FieldError(
          "messages", "no assistant message with weight 1 (nothing to learn)");
    }
    return std::move(example_);
  }
  if (prompt_completion) {
    example_.format = DataFormat::kPromptCompletion;
    if (!top_seen_[kPromptKey]) {
      return FieldError("prompt", "missing or not a string");
    }
    if (!top_seen_[kCompletionKey]) {
      return FieldError("completion", "missing or not a string");
    }
    if (example_.completion.empty()) {
      return FieldError("completion", "empty (nothing to learn)");
    }
    return std::move(example_);
  }
  if (text) {
    example_.format = DataFormat::kText;
    if (example_.text.empty()) {
      return FieldError("text", "must be a non-empty string");
    }
    return std::move(example_);
  }
  return FieldError("messages",
                    "missing (expected the OpenAI chat format "
                    "{\"messages\": [{\"role\": …, \"content\": …}, …]}, "
                    "or {\"prompt\", \"completion\"}, or {\"text\"}, or "
                    "the preference format {\"input\", \"preferred_output\", "
                    "\"non_preferred_output\"})");
}

}  // namespace

const char* DataFormatName(DataFormat format) {
  switch (format) {
    case DataFormat::kChat:
      return "chat";
    case DataFormat::kPromptCompletion:
      return "prompt_completion";
    case DataFormat::kText:
      return "text";
    case DataFormat::kPreference:
      return "preference";
  }
  return "";
}

const char* RoleName(Role role) {
  switch (role) {
    case Role::kSystem:
      return "system";
    case Role::kUser:
      return "user";
    case Role::kAssistant:
      return "assistant";
  }
  return "";
}

bool IsBlankDataLine(absl::string_view line) {
  return line.find_first_not_of(" \t\r\n") == absl::string_view::npos;
}

absl::StatusOr<DataExample> ParseDataLine(absl::string_view line) {
  LineHandler handler(/*keep_messages=*/true);
  Json::sax_parse(line.data(), line.data() + line.size(), &handler);
  return handler.Result();
}

absl::StatusOr<DataFormat> CheckDataLine(absl::string_view line) {
  LineHandler handler(/*keep_messages=*/false);
  Json::sax_parse(line.data(), line.data() + line.size(), &handler);
  ASSIGN_OR_RETURN(DataExample example, handler.Result());
  return example.format;
}

absl::Status DataFileFormat::Add(DataFormat format, int64_t line_number) {
  if (first_line_ == 0) {
    format_ = format;
    first_line_ = line_number;
    return absl::OkStatus();
  }
  if (format == format_) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "mixed formats: this line is ", DataFormatName(format), " but line ",
      first_line_, " is ", DataFormatName(format_), " (one format per file)"));
}

}  // namespace lathe
