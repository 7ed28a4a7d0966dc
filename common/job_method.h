// A job's training method on the wire (v1::Method): which one it is and
// where its hyperparameters are. Every reader of a job's settings (lathed's
// resolution, the worker's translation, the CLI) goes through these.
#ifndef LATHE_COMMON_JOB_METHOD_H_
#define LATHE_COMMON_JOB_METHOD_H_

#include <string>

#include "lathe/v1/fine_tuning.pb.h"

namespace lathe {

// The method types, as Method.type spells them.
inline constexpr const char* kMethodTypes[] = {"supervised", "dpo", "orpo"};

// method.type, with "" (auto, and jobs stored before the field was always
// set) read as "supervised".
std::string MethodType(const v1::Method& method);

// Whether the method trains on preference data (dpo, orpo).
bool IsPreferenceMethod(const std::string& type);

// The hyperparameters of the method named by method.type; those of
// supervised for an unknown type.
const v1::Hyperparameters& MethodHyperparameters(const v1::Method& method);
v1::Hyperparameters* MutableMethodHyperparameters(v1::Method& method);

// "method.<type>.hyperparameters." for error messages ("supervised" for an
// unknown type).
std::string HyperparametersPrefix(const v1::Method& method);

}  // namespace lathe

#endif  // LATHE_COMMON_JOB_METHOD_H_
