// A small command-line parser for `lathe NOUN VERB [ARGS] [--flag[=value]]`.
#ifndef LATHE_CLI_ARGS_H_
#define LATHE_CLI_ARGS_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lathe::cli {

class Args {
 public:
  // `boolean_flags` take no value (e.g. "follow"); every other flag takes
  // one, as --name=value or --name value. "-o X" is --output X. A flag may
  // repeat (Values() returns all).
  static absl::StatusOr<Args> Parse(const std::vector<std::string>& argv,
                                    const std::set<std::string>& boolean_flags);

  const std::vector<std::string>& positional() const { return positional_; }
  bool Has(const std::string& name) const { return flags_.count(name) > 0; }
  std::optional<std::string> Get(const std::string& name) const;
  std::string GetOr(const std::string& name, const std::string& def) const;
  std::vector<std::string> Values(const std::string& name) const;
  // INVALID_ARGUMENT naming the first flag not in `known`.
  absl::Status CheckKnown(const std::set<std::string>& known) const;

 private:
  std::vector<std::string> positional_;
  std::multimap<std::string, std::string> flags_;
};

}  // namespace lathe::cli

#endif  // LATHE_CLI_ARGS_H_
