// The engine's local subcommands, for `lathe-worker <subcommand>`:
//   train SPEC.json     runs Train() on a spec (see spec/run_spec.h), printing
//                       one JSON line per step and a {"summary": ...} line
//                       on stdout; logs go to stderr
//   make-demo --out DIR writes the demo model and data (see demo.h)
//   tokenize            token ids of a text (--add-special-tokens: with
//                       what Hugging Face's encode adds, e.g. BOS), or of
//                       each line of a data file (with its rendered chat
//                       text and loss mask)
//   score               per example: ids, loss mask, log-probs of the actual
//                       next tokens, mean loss over the mask (score.h);
//                       --logits-out saves the first example's logits
//   generate            greedy or sampled continuation of a prompt or a
//                       chat (generate.h)
//   merge               merges fine-tunes of a base model into a model
//                       folder (and a LoRA adapter): merge/merge.h, one
//                       JSON line per tensor (and greedy soup step), then
//                       a {"summary": ...} line
// The usage text (RunEngineCommand with no subcommand) lists their flags.
// tokenize/score/generate/merge print one JSON object per line on stdout.
#ifndef LATHE_WORKER_ENGINE_CLI_ENGINE_CLI_H_
#define LATHE_WORKER_ENGINE_CLI_ENGINE_CLI_H_

namespace lathe::engine {

// argv[1] is the subcommand. Returns the process exit code: 0 on success,
// 1 when the command failed (the error printed on stderr), 2 for bad usage.
// Never throws.
int RunEngineCommand(int argc, char** argv);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_CLI_ENGINE_CLI_H_
