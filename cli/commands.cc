#include "cli/commands.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <iostream>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/args.h"
#include "client/client.h"
#include "common/control_chars.h"
#include "common/job_method.h"
#include "common/job_state.h"
#include "google/protobuf/util/json_util.h"

namespace lathe::cli {
namespace {

constexpr char kUsage[] = R"(lathe: drive a Lathe fine-tuning server.

Usage:
  lathe files upload PATH [--purpose fine-tune]
  lathe files analyze FILE_ID --model MODEL [--validation-file FILE_ID]
                      [--max-seq-len N] [--batch-size N] [--keep-duplicates]
                      [--select loss_quantile|got_d|clear] [--select-loss-quantile LO,HI]
                      got_d: --target FILE_ID --budget N [--epsilon-fraction F]
                      clear: [--score confidence|log_likelihood] [--threshold T]
                             [--drop-fraction Q] [--alpha A] [--samples K]
                             [--temperature T] [--max-new-tokens N]
                             [--answer-extractor KIND [--answer-pattern RE]]
                      (a job: per line tokens, truncation, duplicates, overlap, loss;
                       download report.jsonl and selected.jsonl with jobs download)
  lathe files get FILE_ID
  lathe files list [--limit N] [--after FILE_ID]
  lathe files delete FILE_ID
  lathe files download FILE_ID --out PATH
  lathe admin keys create --project NAME [--role user|admin] [--name LABEL]
  lathe admin keys list [--project NAME]
  lathe admin keys revoke KEY_ID
  lathe webhooks create --url URL [--event-type TYPE]... [--description TEXT]
                  (TYPE: fine_tuning.job.succeeded|failed|cancelled|running|
                   paused|metrics; default the first three; prints the
                   signing secret once)
  lathe webhooks list [--limit N] [--after WEBHOOK_ID]
  lathe webhooks delete WEBHOOK_ID
  lathe webhooks deliveries WEBHOOK_ID [--limit N] [--after DELIVERY_ID]
  lathe models register NAME FOLDER   (admin; FOLDER: absolute, on the server)
  lathe models list
  lathe models get MODEL_ID
  lathe models delete MODEL_ID        (a fine-tuned model: its adapter files go)
  lathe jobs create --model NAME --training-file FILE_ID
                    [--validation-file FILE_ID]
                    [--method supervised|dpo|orpo|prompt_tuning]
                    [--adapter lora|full|s2ft]
                    [--n-epochs N] [--batch-size N]
                    [--learning-rate-multiplier X] [--warmup-steps N]
                    [--lr-scheduler linear|cosine|constant]
                    [--weight-decay X] [--gradient-accumulation-steps N]
                    [--max-seq-len N] [--max-grad-norm X]
                    [--eval-every-steps N] [--checkpoint-every-steps N]
                    [--lora-rank R] [--lora-alpha A] [--lora-dropout P]
                    [--lora-target-modules q_proj,v_proj,...] [--lora-rslora]
                    [--lora-dora] [--lora-layers 0,1,...]
                    [--layers 2-3,bottom2,...] [--modules up_proj,down_proj,...]
                    [--lisa-layers N] [--lisa-interval K]
                    [--half-ft] [--half-ft-reselect stage|epoch]
                    [--half-ft-fraction F] [--half-ft-include-embeddings]
                    [--s2ft-d-ratio R] [--s2ft-u-ratio R] [--s2ft-o-ratio R]
                    [--s2ft-v-ratio R] [--s2ft-seed S]  (adapter s2ft)
                    dpo, orpo: [--beta B] [--max-prompt-len N]
                    dpo: [--loss-type sigmoid|robust|hinge|ipo]
                         [--label-smoothing E] [--rpo-alpha A]
                    prompt_tuning: [--num-virtual-tokens N]
                         [--prompt-init random|text|sample_vocab]
                         [--prompt-init-text TEXT]
                    rft: [--iterations N] [--samples-per-prompt K]
                         [--sample-temperature T] [--sample-top-p P]
                         [--max-new-tokens N]
                         [--answer-extractor gsm8k|last_number|regex|exact]
                         [--answer-pattern REGEX] [--dedupe equations|exact|none]
                         [--no-gold] [--rft-init current|base]
                    spin: [--iterations N] [--sample-temperature T]
                         [--sample-top-p P] [--max-new-tokens N]
                         [--no-accumulate] and dpo's --beta, --loss-type ...
                     (SPIN: per iteration, DPO of the real replies over the
                      model's own against the iteration's starting model)
                     (rejection-sampling fine-tuning: per iteration, K samples
                      per training line; those whose answer is the gold
                      reply's are trained with the gold replies)
                    [--suffix S] [--seed N] [--metadata KEY=VALUE]...
                    [--priority low|normal|high] [--idempotency-key KEY]
                    [--devices N]  (supervised, dpo, orpo: train on N workers
                     at once, data-parallel; --batch-size is the whole step's)
                    [--mixture FILE_ID:WEIGHT[:VALID_FILE_ID],...
                     [--mixture-strategy concat|weighted|temperature]
                     [--mixture-temperature T]
                     [--mixture-stop first_exhausted|all_exhausted]
                     [--regularizer FILE_ID:PROPORTION[:VALID_FILE_ID]]]
                    [--masked-thought P [--mask-token pad|ID]]
                    [--general-file FILE_ID [--general-all-tokens]]
                     (the forgetting report: its loss before and after)
                    [--intruder-top-k K] [--intruder-epsilon E]
                    [--intruder-mitigation-lambda L]  (LoRA)
                    [--dmt GENERAL_FILE_ID[:VALID_FILE_ID] [--dmt-k K]]
                     (DMT: stage 1 on --mixture / --training-file, stage 2
                      on the general file + a fraction K, default 1/256, of
                      each of them)
                    (with --mixture, --training-file may be left out)
  lathe merges create --base MODEL --inputs ft:a,ft:b[,...]
                    [--method linear|task_arithmetic|ties|dare_linear|dare_ties|
                              breadcrumbs|lines|greedy_soup] [--weights W,W,...]
                    [--lambda L] [--density D] [--majority-sign total|frequency]
                    [--beta B] [--gamma G] [--lines-alpha A] [--lines-beta B]
                    [--seed N] [--validation-file FILE_ID (greedy_soup)] [--suffix S]
                    [--lora-rank R [--lora-target-modules q_proj,v_proj,...]]
                    (a job: follow it with jobs get/events, download its model
                     with jobs download; with --lora-rank its result is a
                     PEFT LoRA adapter of rank R, re-factorised by SVD)
  lathe jobs get JOB_ID
  lathe jobs list [--status STATUS] [--metadata KEY=VALUE]... [--limit N]
                  [--after JOB_ID]
  lathe jobs cancel|pause|resume JOB_ID
  lathe jobs events JOB_ID [--follow] [--after EVENT_ID] [--limit N]
  lathe jobs watch JOB_ID [--after EVENT_ID]     (= events --follow)
  lathe jobs wait JOB_ID [--timeout SECONDS]
  lathe jobs checkpoints JOB_ID
  lathe jobs download JOB_ID --out DIR [--checkpoint STEP|latest]

Global flags:
  --server HOST:PORT   lathed's address (default $LATHE_SERVER or 127.0.0.1:7070)
  --api_key KEY        your API key (default $LATHE_API_KEY); it decides the
                       project you act in
  --ca_cert FILE       PEM CA that signed lathed's certificate (default
                       $LATHE_CA_CERT, else the system's roots)
  --tls_server_name N  expect N in lathed's certificate instead of the host
  --insecure           plaintext, for a lathed started with --insecure
                       (default: on if $LATHE_INSECURE is 1)
  -o, --output FORMAT  text (default) or json
)";

struct Env {
  Args args;
  Client* client;
  bool json;
};

int Fail(const absl::Status& st) {
  std::cerr << "error: " << absl::StatusCodeToString(st.code()) << ": "
            << st.message() << "\n";
  std::string lower = absl::AsciiStrToLower(st.message());
  if (st.code() == absl::StatusCode::kUnavailable &&
      (absl::StrContains(lower, "ssl") || absl::StrContains(lower, "handshake") ||
       absl::StrContains(lower, "tls"))) {
    std::cerr << "hint: the TLS handshake failed: pass the CA that signed "
                 "lathed's certificate with --ca_cert or $LATHE_CA_CERT (or "
                 "--insecure if lathed serves plaintext)\n";
  } else if (st.code() == absl::StatusCode::kUnavailable) {
    std::cerr << "hint: is lathed running at that address? (--server or "
                 "$LATHE_SERVER; --insecure if it serves plaintext)\n";
  }
  if (st.code() == absl::StatusCode::kUnauthenticated) {
    std::cerr << "hint: pass an API key with --api_key or $LATHE_API_KEY (an "
                 "operator creates one with `lathe admin keys create`)\n";
  }
  return 1;
}

int Usage(const std::string& why) {
  std::cerr << "error: " << why << "\n\n" << kUsage;
  return 2;
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

// One JSON object per line, for streams of events.
std::string ToJsonLine(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

std::string FormatTime(int64_t unix_seconds) {
  if (unix_seconds == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixSeconds(unix_seconds),
                          absl::LocalTimeZone());
}

std::string HumanBytes(int64_t n) {
  if (n < 1024) return absl::StrCat(n, " B");
  if (n < (1 << 20)) return absl::StrFormat("%.1f KiB", n / 1024.0);
  if (n < (1 << 30)) return absl::StrFormat("%.1f MiB", n / 1048576.0);
  return absl::StrFormat("%.2f GiB", n / 1073741824.0);
}

// A one-line progress display on stderr, redrawn in place on a terminal.
Client::Progress ProgressLine(const std::string& what) {
  bool tty = isatty(STDERR_FILENO);
  auto last = std::make_shared<absl::Time>(absl::InfinitePast());
  return [what, tty, last](int64_t done, int64_t total) {
    absl::Time now = absl::Now();
    bool end = total > 0 && done >= total;
    if (!end && now - *last < absl::Milliseconds(tty ? 100 : 2000)) return;
    *last = now;
    std::string pct = total > 0 ? absl::StrFormat("%3.0f%% ", 100.0 * done / total) : "";
    std::cerr << (tty ? "\r" : "") << what << ": " << pct << HumanBytes(done)
              << (total > 0 ? absl::StrCat(" / ", HumanBytes(total)) : "")
              << (tty && !end ? "" : "\n") << std::flush;
  };
}

// The name is escaped: a database may hold names from before lathed refused
// control characters, and one must not drive the terminal.
void PrintFile(const v1::File& f) {
  std::cout << absl::StrFormat("%s  %s  %s  %d examples  sha256 %s\n", f.id(),
                               EscapeControlChars(f.filename()),
                               HumanBytes(f.bytes()), f.line_count(),
                               f.sha256().substr(0, 16));
}

// "linear", "cosine", "constant" (the proto's names, lower-cased).
std::string SchedulerName(v1::LrScheduler s) {
  std::string name = v1::LrScheduler_Name(s);
  constexpr absl::string_view kPrefix = "LR_SCHEDULER_";
  if (absl::StartsWith(name, kPrefix)) name = name.substr(kPrefix.size());
  return absl::AsciiStrToLower(name);
}

// An enum value's name without its prefix, in lower case: "weighted".
std::string EnumSuffix(std::string name, absl::string_view prefix) {
  if (absl::StartsWith(name, prefix)) name = name.substr(prefix.size());
  return absl::AsciiStrToLower(name);
}

// A mixture's sources, one line each, under its heading line.
void PrintSources(const v1::Mixture& m) {
  for (const v1::MixtureSource& s : m.sources()) {
    std::cout << absl::StrFormat(
        "                  %s file=%s %s%s%s\n", s.name(), s.file_id(),
        s.proportion() > 0 ? absl::StrFormat("proportion=%g", s.proportion())
                           : absl::StrFormat("weight=%g", s.weight()),
        s.fraction() < 1 ? absl::StrFormat(" fraction=%g", s.fraction()) : "",
        s.validation_file_id().empty() ? "" : " validation_file=" + s.validation_file_id());
  }
}

void PrintJob(const v1::Job& j) {
  std::cout << "id:               " << j.id() << "\n"
            << "status:           " << StatusName(j.status()) << "\n"
            << "model:            " << j.model() << "\n"
            << "training_file:    " << j.training_file() << "\n";
  if (!j.validation_file().empty()) {
    std::cout << "validation_file:  " << j.validation_file() << "\n";
  }
  if (j.training_mixture().sources_size() > 0) {
    const v1::Mixture& m = j.training_mixture();
    std::cout << absl::StrFormat("training_mixture: strategy=%s temperature=%g stop=%s\n",
                                 EnumSuffix(v1::MixtureStrategy_Name(m.strategy()),
                                            "MIXTURE_STRATEGY_"),
                                 m.temperature(),
                                 EnumSuffix(v1::MixtureStop_Name(m.stop()), "MIXTURE_STOP_"));
    PrintSources(m);
  }
  if (j.method().type() == "analyze") {
    const v1::AnalyzeMethod& a = j.method().analyze();
    std::cout << absl::StrFormat(
        "analyze:          max_seq_len=%d loss_quantiles=%g..%g keep_duplicates=%s "
        "batch_size=%d selection=%s\n",
        a.max_seq_len(), a.loss_quantile_low(), a.loss_quantile_high(),
        a.keep_duplicates() ? "true" : "false", a.batch_size(),
        EnumSuffix(v1::AnalyzeSelection_Name(a.selection()), "ANALYZE_SELECTION_"));
    if (a.selection() == v1::ANALYZE_SELECTION_GOT_D) {
      std::cout << absl::StrFormat("got_d:            target_file=%s budget=%d epsilon_fraction=%g\n",
                                   a.got_d().target_file(), a.got_d().budget(),
                                   a.got_d().epsilon_fraction());
    }
    if (a.selection() == v1::ANALYZE_SELECTION_CLEAR) {
      const v1::ClearSelection& c = a.clear();
      std::cout << absl::StrFormat(
          "clear:            score=%s alpha=%g samples=%d temperature=%g max_new_tokens=%d "
          "threshold=%s drop_fraction=%g answer_extractor=%s\n",
          EnumSuffix(v1::ClearScore_Name(c.score()), "CLEAR_SCORE_"),
          c.alpha(), c.samples(), c.temperature(), c.max_new_tokens(),
          c.has_threshold() ? absl::StrCat(c.threshold()) : "none", c.drop_fraction(),
          c.answer_extractor().empty() ? "token_f1" : c.answer_extractor());
    }
  }
  if (j.method().type() == "merge") {
    const v1::MergeMethod& m = j.method().merge();
    std::cout << "merge:            " << m.merge_method() << " of " << absl::StrJoin(m.inputs(), ", ")
              << absl::StrFormat(" weights=[%s] lambda=%g density=%g majority_sign=%s beta=%g "
                                 "gamma=%g lines_alpha=%g lines_beta=%g\n",
                                 absl::StrJoin(m.weights(), ","), m.lambda(), m.density(),
                                 m.majority_sign(), m.beta(), m.gamma(), m.lines_alpha(),
                                 m.lines_beta());
    if (m.has_lora_rank()) {
      std::cout << absl::StrFormat(
          "                  result: a LoRA adapter, rank=%d targets=%s\n", m.lora_rank(),
          m.lora_target_modules().empty() ? "the LoRA inputs'"
                                          : absl::StrJoin(m.lora_target_modules(), ","));
    }
  }
  for (const v1::TrainingStage& stage : j.stages()) {
    const v1::Mixture& m = stage.training_mixture();
    std::cout << absl::StrFormat("stage:            %s n_epochs=%d strategy=%s temperature=%g stop=%s\n",
                                 stage.name(), stage.n_epochs(),
                                 EnumSuffix(v1::MixtureStrategy_Name(m.strategy()),
                                            "MIXTURE_STRATEGY_"),
                                 m.temperature(),
                                 EnumSuffix(v1::MixtureStop_Name(m.stop()), "MIXTURE_STOP_"));
    PrintSources(m);
  }
  if (j.method().supervised().has_masked_thought()) {
    const v1::MaskedThought& mt = j.method().supervised().masked_thought();
    std::cout << absl::StrFormat(
        "masked_thought:   mask_rate=%g schedule=%s warmup_ratio=%g mask_token=%s\n",
        mt.mask_rate(), EnumSuffix(v1::MaskRateSchedule_Name(mt.schedule()), "MASK_RATE_SCHEDULE_"),
        mt.warmup_ratio(),
        mt.has_mask_token_id() ? absl::StrCat(mt.mask_token_id()) : std::string("pad"));
  }
  const auto& hp = MethodHyperparameters(j.method());
  const std::string method = MethodType(j.method());
  std::cout << "method:           " << method << "\n";
  if (j.devices() > 1) {
    std::cout << "devices:          " << j.devices()
              << " workers, data-parallel\n";
  }
  std::cout << absl::StrFormat(
      "hyperparameters:  n_epochs=%d batch_size=%d learning_rate_multiplier=%g "
      "(learning_rate=%g)\n"
      "                  warmup_steps=%d lr_scheduler=%s weight_decay=%g "
      "gradient_accumulation_steps=%d\n"
      "                  max_seq_len=%d max_grad_norm=%g eval_every_steps=%d "
      "checkpoint_every_steps=%d\n",
      hp.n_epochs(), hp.batch_size(), hp.learning_rate_multiplier(), hp.learning_rate(),
      hp.warmup_steps(), SchedulerName(hp.lr_scheduler()), hp.weight_decay(),
      hp.gradient_accumulation_steps(), hp.max_seq_len(), hp.max_grad_norm(),
      hp.eval_every_steps(), hp.checkpoint_every_steps());
  if (method == "dpo") {
    std::cout << absl::StrFormat(
        "dpo:              beta=%g loss_type=%s label_smoothing=%g rpo_alpha=%g "
        "max_prompt_len=%d\n",
        hp.beta(),
        absl::AsciiStrToLower(v1::PreferenceLoss_Name(hp.loss_type()).substr(16)),
        hp.label_smoothing(), hp.rpo_alpha(), hp.max_prompt_len());
  } else if (method == "orpo") {
    std::cout << absl::StrFormat("orpo:             lambda=%g max_prompt_len=%d\n",
                                 hp.beta(), hp.max_prompt_len());
  }
  if (j.adapter() == v1::ADAPTER_TYPE_PROMPT_TUNING) {
    const auto& p = j.method().prompt_tuning();
    std::cout << absl::StrFormat(
        "adapter:          prompt tuning, num_virtual_tokens=%d init=%s%s\n",
        p.num_virtual_tokens(),
        absl::AsciiStrToLower(v1::PromptTuningInit_Name(p.init()).substr(19)),
        p.init_text().empty() ? ""
                              : absl::StrCat(" init_text=\"", absl::CHexEscape(p.init_text()),
                                             "\""));
  } else if (j.adapter() == v1::ADAPTER_TYPE_FULL) {
    std::cout << "adapter:          full (every weight is trained)\n";
  } else if (j.adapter() == v1::ADAPTER_TYPE_S2FT) {
    std::cout << absl::StrFormat(
        "adapter:          s2ft d_ratio=%g u_ratio=%g o_ratio=%g v_ratio=%g seed=%d\n",
        j.s2ft().d_ratio(), j.s2ft().u_ratio(), j.s2ft().o_ratio(), j.s2ft().v_ratio(),
        j.s2ft().seed());
  } else {
    std::cout << absl::StrFormat(
        "lora:             rank=%d alpha=%g dropout=%g targets=%s%s\n", j.lora().rank(),
        j.lora().alpha(), j.lora().dropout(), absl::StrJoin(j.lora().target_modules(), ","),
        j.lora().use_rslora() ? " rslora" : "");
    if (j.lora().use_dora()) std::cout << "                  dora\n";
    if (j.lora().layers_to_transform_size() > 0) {
      std::cout << "                  layers="
                << absl::StrJoin(j.lora().layers_to_transform(), ",") << "\n";
    }
  }
  if (j.has_trainable()) {
    const v1::Trainable& t = j.trainable();
    std::string what;
    if (t.has_lisa()) {
      what = absl::StrFormat("lisa activated_layers=%d interval_steps=%d",
                             t.lisa().activated_layers(),
                             t.lisa().interval_steps());
    } else if (t.has_half_ft()) {
      what = absl::StrFormat(
          "half_ft reselect=%s seed=%d fraction=%g%s",
          t.half_ft().reselect() == v1::HALF_FT_RESELECT_EPOCH ? "epoch"
                                                               : "stage",
          t.half_ft().seed(), t.half_ft().fraction(),
          t.half_ft().include_embeddings() ? " include_embeddings" : "");
    } else {
      what = absl::StrCat(
          "layers=",
          t.layers().empty() ? "all" : absl::StrJoin(t.layers(), ","),
          " modules=",
          t.modules().empty() ? "all" : absl::StrJoin(t.modules(), ","));
    }
    std::cout << "trainable:        " << what << "\n";
  }
  std::cout << "created_at:       " << FormatTime(j.created_at()) << "\n";
  if (j.queue_position() > 0) {
    std::cout << "queue_position:   " << j.queue_position() << "\n";
  }
  if (j.progress().steps_total() > 0) {
    std::cout << absl::StrFormat("progress:         %d/%d steps",
                                 j.progress().steps_done(), j.progress().steps_total());
    if (j.progress().seconds_remaining() > 0) {
      std::cout << ", about " << j.progress().seconds_remaining() << " s left";
    }
    std::cout << "\n";
  }
  if (j.trained_tokens() > 0) std::cout << "trained_tokens:   " << j.trained_tokens() << "\n";
  if (!j.fine_tuned_model().empty()) {
    std::cout << "fine_tuned_model: " << j.fine_tuned_model() << "\n";
  }
  if (!j.reports().general_file().empty()) {
    std::cout << "general_file:     " << j.reports().general_file()
              << (j.reports().all_tokens() ? " (all tokens)" : " (assistant tokens)") << "\n";
  }
  if (method == "rft") {
    const v1::RftMethod& m = j.method().rft();
    std::cout << absl::StrFormat(
        "rft:              iterations=%d samples_per_prompt=%d temperature=%g top_p=%g "
        "max_new_tokens=%d answer_extractor=%s%s dedupe=%s include_gold=%s init=%s\n",
        m.iterations(), m.samples_per_prompt(), m.temperature(), m.top_p(), m.max_new_tokens(),
        m.answer_extractor(),
        m.answer_pattern().empty()
            ? ""
            : absl::StrCat(" answer_pattern=\"", absl::CHexEscape(m.answer_pattern()), "\""),
        m.dedupe(), m.include_gold() ? "true" : "false", m.init());
  }
  if (method == "spin") {
    const v1::SpinMethod& m = j.method().spin();
    std::cout << absl::StrFormat(
        "spin:             iterations=%d temperature=%g top_p=%g max_new_tokens=%d "
        "accumulate_previous=%s\n",
        m.iterations(), m.temperature(), m.top_p(), m.max_new_tokens(),
        m.accumulate_previous() ? "true" : "false");
  }
  for (const v1::IterationSummary& it : j.report().iterations()) {
    std::cout << absl::StrFormat(
        "iteration %d:      %d/%d samples correct (%.1f%%), %d kept, %d RFT examples; "
        "steps %d-%d, loss %.4f -> %.4f\n",
        it.iteration(), it.correct(), it.samples(), 100 * it.accepted_fraction(), it.kept(),
        it.rft_examples(), it.first_step() + 1, it.last_step(), it.first_loss(),
        it.last_loss());
  }
  if (j.report().has_forgetting()) {
    const v1::ForgettingReport& f = j.report().forgetting();
    std::cout << absl::StrFormat(
        "forgetting:       loss %.4f before, %.4f after, delta %+.4f, ppl ratio %.4f (%d %s "
        "tokens)\n",
        f.loss_before(), f.loss_after(), f.delta(), f.ppl_ratio(), f.tokens(),
        f.tokens_counted());
  }
  if (j.report().has_intruders()) {
    const v1::IntruderReport& r = j.report().intruders();
    std::cout << absl::StrFormat(
        "intruders:        %d in %d adapted matrices (top %d, epsilon %g)\n", r.total(),
        r.matrices_size(), r.top_k(), r.epsilon());
    for (const v1::IntruderMatrix& m : r.matrices()) {
      if (m.intruders() == 0) continue;
      std::cout << absl::StrFormat("                  %s: %d (min similarity %.3f)\n", m.name(),
                                   m.intruders(), m.min_similarity());
    }
    if (r.has_mitigation_lambda()) {
      std::cout << absl::StrFormat(
          "                  mitigated (lambda %g): %d matrices re-factorised; the adapter is the "
          "mitigated one\n",
          r.mitigation_lambda(), r.mitigated_matrices());
    }
  }
  if (!j.error().code().empty()) {
    std::cout << "error:            " << j.error().code() << ": " << j.error().message()
              << (j.error().param().empty() ? "" : absl::StrCat(" (", j.error().param(), ")"))
              << (j.error().user_fault() ? "" : " [platform fault]") << "\n";
  }
  for (const auto& f : j.result_files()) {
    std::cout << "result_file:      " << f.name() << " (" << HumanBytes(f.bytes())
              << ", sha256 " << f.sha256().substr(0, 16) << ")\n";
  }
}

void PrintEvent(const v1::JobEvent& e) {
  std::string when = absl::FormatTime("%H:%M:%S", absl::FromUnixSeconds(e.created_at()),
                                      absl::LocalTimeZone());
  if (e.type() == "metrics") {
    const auto& m = e.metrics();
    std::cout << absl::StrFormat(
        "%s  step %d/%d  loss %.4f  acc %.3f  lr %.2e  %.0f tok/s", when, m.step(),
        m.total_steps(), m.train_loss(), m.train_mean_token_accuracy(),
        m.learning_rate(), m.tokens_per_second());
    // The method's own figures, by name (sorted: the map is ordered).
    for (const auto& [name, value] :
         std::map<std::string, double>(m.values().begin(), m.values().end())) {
      std::cout << absl::StrFormat("  %s %.4g", name, value);
    }
    std::cout << "\n";
  } else {
    std::cout << when << "  " << (e.level() == "info" ? "" : e.level() + ": ")
              << e.message() << "\n";
  }
  std::cout.flush();
}

absl::StatusOr<int64_t> IntFlag(const Args& a, const std::string& name) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(*a.Get(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": not an integer"));
  }
  return v;
}

absl::StatusOr<double> DoubleFlag(const Args& a, const std::string& name) {
  double v = 0;
  if (!absl::SimpleAtod(*a.Get(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": not a number"));
  }
  return v;
}

absl::StatusOr<std::map<std::string, std::string>> MetadataFlags(const Args& a) {
  std::map<std::string, std::string> out;
  for (const std::string& kv : a.Values("metadata")) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--metadata: expected KEY=VALUE, got \"", kv, "\""));
    }
    out[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return out;
}

// One --mixture / --regularizer item: FILE_ID:NUMBER[:VALIDATION_FILE_ID].
absl::StatusOr<v1::MixtureSource> MixtureItem(const std::string& flag, absl::string_view item,
                                              bool proportion) {
  std::vector<std::string> parts = absl::StrSplit(item, ':');
  double value = 0;
  if (parts.size() < 2 || parts.size() > 3 || parts[0].empty() ||
      !absl::SimpleAtod(parts[1], &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": expected FILE_ID:", proportion ? "PROPORTION" : "WEIGHT",
                     "[:VALIDATION_FILE_ID], got \"", item, "\""));
  }
  v1::MixtureSource s;
  s.set_file_id(parts[0]);
  if (proportion) {
    s.set_proportion(value);
  } else {
    s.set_weight(value);
  }
  if (parts.size() == 3) s.set_validation_file_id(parts[2]);
  return s;
}

// --mixture, its options and --regularizer into training_mixture;
// --masked-thought and --mask-token into method.supervised.masked_thought.
absl::Status MixtureAndMaskFlags(const Args& a, v1::CreateJobRequest& r) {
  const bool mixture_options = a.Has("mixture-strategy") || a.Has("mixture-temperature") ||
                               a.Has("mixture-stop") || a.Has("regularizer");
  if (mixture_options && !a.Has("mixture")) {
    return absl::InvalidArgumentError(
        "--mixture-strategy, --mixture-temperature, --mixture-stop and --regularizer go with "
        "--mixture");
  }
  if (a.Has("mixture")) {
    v1::Mixture& m = *r.mutable_training_mixture();
    for (absl::string_view item : absl::StrSplit(*a.Get("mixture"), ',', absl::SkipEmpty())) {
      auto s = MixtureItem("mixture", item, /*proportion=*/false);
      if (!s.ok()) return s.status();
      *m.add_sources() = *std::move(s);
    }
    for (const std::string& g : a.Values("regularizer")) {
      auto s = MixtureItem("regularizer", g, /*proportion=*/true);
      if (!s.ok()) return s.status();
      *m.add_sources() = *std::move(s);
    }
    if (a.Has("mixture-strategy")) {
      v1::MixtureStrategy v;
      if (!v1::MixtureStrategy_Parse(
              "MIXTURE_STRATEGY_" + absl::AsciiStrToUpper(*a.Get("mixture-strategy")), &v)) {
        return absl::InvalidArgumentError(
            "--mixture-strategy: use concat, weighted or temperature");
      }
      m.set_strategy(v);
    }
    if (a.Has("mixture-temperature")) {
      auto v = DoubleFlag(a, "mixture-temperature");
      if (!v.ok()) return v.status();
      m.set_temperature(*v);
    }
    if (a.Has("mixture-stop")) {
      v1::MixtureStop v;
      if (!v1::MixtureStop_Parse("MIXTURE_STOP_" + absl::AsciiStrToUpper(*a.Get("mixture-stop")),
                                 &v)) {
        return absl::InvalidArgumentError("--mixture-stop: use first_exhausted or all_exhausted");
      }
      m.set_stop(v);
    }
  }
  if (a.Has("mask-token") && !a.Has("masked-thought")) {
    return absl::InvalidArgumentError("--mask-token goes with --masked-thought");
  }
  if (a.Has("masked-thought")) {
    auto* mt = r.mutable_method()->mutable_supervised()->mutable_masked_thought();
    auto v = DoubleFlag(a, "masked-thought");
    if (!v.ok()) return v.status();
    mt->set_mask_rate(*v);
    const std::string token = a.GetOr("mask-token", "pad");
    if (token != "pad") {
      int32_t id = 0;
      if (!absl::SimpleAtoi(token, &id)) {
        return absl::InvalidArgumentError("--mask-token: use pad or a token id");
      }
      mt->set_mask_token_id(id);
    }
  }
  return absl::OkStatus();
}

// --dmt GENERAL[:VALID] [--dmt-k K]: DMT's two stages (METHODS.md §2.2)
// from the specialised data of --mixture or --training-file: stage
// "specialised" on it, then stage "general" on the general file plus a
// seeded fraction K (default 1/256) of each specialised file.
absl::Status DmtFlags(const Args& a, v1::CreateJobRequest& r) {
  if (a.Has("dmt-k") && !a.Has("dmt")) return absl::InvalidArgumentError("--dmt-k goes with --dmt");
  if (!a.Has("dmt")) return absl::OkStatus();
  if (a.Has("regularizer")) {
    return absl::InvalidArgumentError(
        "--regularizer does not go with --dmt (the general file is stage 2's data)");
  }
  double k = 1.0 / 256;
  if (a.Has("dmt-k")) {
    const std::string text = *a.Get("dmt-k");
    std::vector<std::string> parts = absl::StrSplit(text, '/');
    double num = 0, den = 1;
    if (parts.size() > 2 || !absl::SimpleAtod(parts[0], &num) ||
        (parts.size() == 2 && (!absl::SimpleAtod(parts[1], &den) || den == 0))) {
      return absl::InvalidArgumentError(
          absl::StrCat("--dmt-k: expected a fraction like 1/256 or 0.01, got \"", text, "\""));
    }
    k = num / den;
  }
  v1::TrainingStage first;
  first.set_name("specialised");
  if (r.has_training_mixture()) {
    *first.mutable_training_mixture() = r.training_mixture();
  } else if (!r.training_file().empty()) {
    first.mutable_training_mixture()->add_sources()->set_file_id(r.training_file());
  } else {
    return absl::InvalidArgumentError(
        "--dmt needs the specialised data: --mixture or --training-file");
  }
  v1::TrainingStage second;
  second.set_name("general");
  std::vector<std::string> general = absl::StrSplit(*a.Get("dmt"), ':');
  if (general.size() > 2 || general[0].empty()) {
    return absl::InvalidArgumentError("--dmt: expected GENERAL_FILE_ID[:VALIDATION_FILE_ID]");
  }
  v1::MixtureSource& g = *second.mutable_training_mixture()->add_sources();
  g.set_file_id(general[0]);
  if (general.size() == 2) g.set_validation_file_id(general[1]);
  for (const v1::MixtureSource& s : first.training_mixture().sources()) {
    v1::MixtureSource& sub = *second.mutable_training_mixture()->add_sources();
    sub.set_file_id(s.file_id());
    sub.set_name(s.name());
    sub.set_validation_file_id(s.validation_file_id());
    sub.set_fraction(k);
  }
  r.clear_training_mixture();
  r.clear_training_file();
  *r.add_stages() = std::move(first);
  *r.add_stages() = std::move(second);
  return absl::OkStatus();
}

absl::StatusOr<v1::CreateJobRequest> BuildCreate(const Args& a) {
  v1::CreateJobRequest r;
  r.set_model(a.GetOr("model", ""));
  r.set_training_file(a.GetOr("training-file", ""));
  r.set_validation_file(a.GetOr("validation-file", ""));
  if (a.Has("general-file")) r.mutable_reports()->set_general_file(*a.Get("general-file"));
  if (a.Has("general-all-tokens")) {
    if (!a.Has("general-file")) {
      return absl::InvalidArgumentError("--general-all-tokens goes with --general-file");
    }
    r.mutable_reports()->set_all_tokens(true);
  }
  if (a.Has("intruder-top-k")) {
    auto v = IntFlag(a, "intruder-top-k");
    if (!v.ok()) return v.status();
    r.mutable_reports()->set_intruder_top_k(static_cast<int32_t>(*v));
  }
  if (a.Has("intruder-mitigation-lambda")) {
    auto v = DoubleFlag(a, "intruder-mitigation-lambda");
    if (!v.ok()) return v.status();
    r.mutable_reports()->set_intruder_mitigation_lambda(*v);
  }
  if (a.Has("intruder-epsilon")) {
    auto v = DoubleFlag(a, "intruder-epsilon");
    if (!v.ok()) return v.status();
    r.mutable_reports()->set_intruder_epsilon(*v);
  }
  r.set_suffix(a.GetOr("suffix", ""));
  r.set_idempotency_key(a.GetOr("idempotency-key", ""));
  // The method (what is optimised) and the adapter (what is trained).
  // --method lora|full, from before the methods, still chooses the adapter
  // of supervised fine-tuning.
  std::string method = a.GetOr("method", "supervised");
  if (method == "full" || method == "lora") {
    r.set_adapter(method == "full" ? v1::ADAPTER_TYPE_FULL : v1::ADAPTER_TYPE_LORA);
    method = "supervised";
  }
  if (std::find(std::begin(kMethodTypes), std::end(kMethodTypes), method) ==
      std::end(kMethodTypes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--method: use ", absl::StrJoin(kMethodTypes, ", ")));
  }
  if (a.Has("adapter")) {
    const std::string adapter = *a.Get("adapter");
    if (adapter == "full") r.set_adapter(v1::ADAPTER_TYPE_FULL);
    else if (adapter == "lora") r.set_adapter(v1::ADAPTER_TYPE_LORA);
    else if (adapter == "s2ft") r.set_adapter(v1::ADAPTER_TYPE_S2FT);
    else return absl::InvalidArgumentError("--adapter: use lora, full or s2ft");
  }
  // S²FT's selection (lathed checks the ranges).
  for (const auto& [flag, set] :
       {std::pair<const char*, void (v1::S2ftConfig::*)(double)>{
            "s2ft-d-ratio", &v1::S2ftConfig::set_d_ratio},
        {"s2ft-u-ratio", &v1::S2ftConfig::set_u_ratio},
        {"s2ft-o-ratio", &v1::S2ftConfig::set_o_ratio},
        {"s2ft-v-ratio", &v1::S2ftConfig::set_v_ratio}}) {
    if (!a.Has(flag)) continue;
    auto v = DoubleFlag(a, flag);
    if (!v.ok()) return v.status();
    (r.mutable_s2ft()->*set)(*v);
  }
  if (a.Has("s2ft-seed")) {
    auto v = IntFlag(a, "s2ft-seed");
    if (!v.ok()) return v.status();
    r.mutable_s2ft()->set_seed(*v);
  }
  r.mutable_method()->set_type(method);
  auto* hp = MutableMethodHyperparameters(*r.mutable_method());
  auto is_auto = [&](const std::string& f) { return a.GetOr(f, "auto") == "auto"; };
  if (!is_auto("n-epochs")) {
    auto v = IntFlag(a, "n-epochs");
    if (!v.ok()) return v.status();
    hp->set_n_epochs(static_cast<int32_t>(*v));
  }
  if (!is_auto("batch-size")) {
    auto v = IntFlag(a, "batch-size");
    if (!v.ok()) return v.status();
    hp->set_batch_size(static_cast<int32_t>(*v));
  }
  if (!is_auto("learning-rate-multiplier")) {
    auto v = DoubleFlag(a, "learning-rate-multiplier");
    if (!v.ok()) return v.status();
    hp->set_learning_rate_multiplier(*v);
  }
  // Lathe's settings: each unset one is auto (the job shows what ran).
  struct IntSetting {
    const char* flag;
    void (v1::Hyperparameters::*set)(int32_t);
  };
  for (const IntSetting& f : {
           IntSetting{"warmup-steps", &v1::Hyperparameters::set_warmup_steps},
           IntSetting{"gradient-accumulation-steps",
                      &v1::Hyperparameters::set_gradient_accumulation_steps},
           IntSetting{"max-seq-len", &v1::Hyperparameters::set_max_seq_len},
           IntSetting{"eval-every-steps", &v1::Hyperparameters::set_eval_every_steps},
           IntSetting{"checkpoint-every-steps",
                      &v1::Hyperparameters::set_checkpoint_every_steps},
           IntSetting{"max-prompt-len", &v1::Hyperparameters::set_max_prompt_len},
       }) {
    if (is_auto(f.flag)) continue;
    auto v = IntFlag(a, f.flag);
    if (!v.ok()) return v.status();
    (hp->*f.set)(static_cast<int32_t>(*v));
  }
  for (const auto& [flag, set] :
       std::vector<std::pair<const char*, void (v1::Hyperparameters::*)(double)>>{
           {"weight-decay", &v1::Hyperparameters::set_weight_decay},
           {"max-grad-norm", &v1::Hyperparameters::set_max_grad_norm},
           {"beta", &v1::Hyperparameters::set_beta},
           {"label-smoothing", &v1::Hyperparameters::set_label_smoothing},
           {"rpo-alpha", &v1::Hyperparameters::set_rpo_alpha}}) {
    if (is_auto(flag)) continue;
    auto v = DoubleFlag(a, flag);
    if (!v.ok()) return v.status();
    (hp->*set)(*v);
  }
  if (!is_auto("lr-scheduler")) {
    v1::LrScheduler s;
    if (!v1::LrScheduler_Parse("LR_SCHEDULER_" + absl::AsciiStrToUpper(*a.Get("lr-scheduler")),
                               &s) ||
        s == v1::LR_SCHEDULER_UNSPECIFIED) {
      return absl::InvalidArgumentError("--lr-scheduler: use linear, cosine or constant");
    }
    hp->set_lr_scheduler(s);
  }
  if (a.Has("num-virtual-tokens")) {
    auto v = IntFlag(a, "num-virtual-tokens");
    if (!v.ok()) return v.status();
    r.mutable_method()->mutable_prompt_tuning()->set_num_virtual_tokens(
        static_cast<int32_t>(*v));
  }
  if (!is_auto("prompt-init")) {
    v1::PromptTuningInit init;
    if (!v1::PromptTuningInit_Parse(
            "PROMPT_TUNING_INIT_" + absl::AsciiStrToUpper(*a.Get("prompt-init")), &init) ||
        init == v1::PROMPT_TUNING_INIT_UNSPECIFIED) {
      return absl::InvalidArgumentError("--prompt-init: use random, text or sample_vocab");
    }
    r.mutable_method()->mutable_prompt_tuning()->set_init(init);
  }
  if (a.Has("prompt-init-text")) {
    r.mutable_method()->mutable_prompt_tuning()->set_init_text(*a.Get("prompt-init-text"));
  }
  {
    v1::RftMethod* rft = r.mutable_method()->mutable_rft();
    bool any = false;
    for (const auto& [flag, set] :
         std::vector<std::pair<const char*, void (v1::RftMethod::*)(int32_t)>>{
             {"iterations", &v1::RftMethod::set_iterations},
             {"samples-per-prompt", &v1::RftMethod::set_samples_per_prompt},
             {"max-new-tokens", &v1::RftMethod::set_max_new_tokens}}) {
      if (!a.Has(flag)) continue;
      auto v = IntFlag(a, flag);
      if (!v.ok()) return v.status();
      (rft->*set)(static_cast<int32_t>(*v));
      any = true;
    }
    for (const auto& [flag, set] :
         std::vector<std::pair<const char*, void (v1::RftMethod::*)(double)>>{
             {"sample-temperature", &v1::RftMethod::set_temperature},
             {"sample-top-p", &v1::RftMethod::set_top_p}}) {
      if (!a.Has(flag)) continue;
      auto v = DoubleFlag(a, flag);
      if (!v.ok()) return v.status();
      (rft->*set)(*v);
      any = true;
    }
    for (const auto& [flag, set] :
         std::vector<std::pair<const char*, void (v1::RftMethod::*)(const std::string&)>>{
             {"answer-extractor", &v1::RftMethod::set_answer_extractor},
             {"answer-pattern", &v1::RftMethod::set_answer_pattern},
             {"dedupe", &v1::RftMethod::set_dedupe},
             {"rft-init", &v1::RftMethod::set_init}}) {
      if (!a.Has(flag)) continue;
      (rft->*set)(*a.Get(flag));
      any = true;
    }
    if (a.Has("no-gold")) {
      rft->set_include_gold(false);
      any = true;
    }
    if (method == "spin") {
      // The same flags, on SPIN's message.
      v1::SpinMethod* spin = r.mutable_method()->mutable_spin();
      if (rft->has_iterations()) spin->set_iterations(rft->iterations());
      if (rft->has_temperature()) spin->set_temperature(rft->temperature());
      if (rft->has_top_p()) spin->set_top_p(rft->top_p());
      if (rft->has_max_new_tokens()) spin->set_max_new_tokens(rft->max_new_tokens());
      r.mutable_method()->clear_rft();
      for (const char* flag : {"samples-per-prompt", "answer-extractor", "answer-pattern",
                               "dedupe", "no-gold", "rft-init"}) {
        if (a.Has(flag)) {
          return absl::InvalidArgumentError(absl::StrCat("--", flag, " is for --method rft"));
        }
      }
      if (a.Has("no-accumulate")) spin->set_accumulate_previous(false);
    } else if (a.Has("no-accumulate")) {
      return absl::InvalidArgumentError("--no-accumulate is for --method spin");
    }
    if (!any && method != "rft") r.mutable_method()->clear_rft();
  }
  if (!is_auto("loss-type")) {
    v1::PreferenceLoss l;
    if (!v1::PreferenceLoss_Parse(
            "PREFERENCE_LOSS_" + absl::AsciiStrToUpper(*a.Get("loss-type")), &l) ||
        l == v1::PREFERENCE_LOSS_UNSPECIFIED) {
      return absl::InvalidArgumentError("--loss-type: use sigmoid, robust, hinge or ipo");
    }
    hp->set_loss_type(l);
  }
  if (a.Has("lora-rslora")) r.mutable_lora()->set_use_rslora(true);
  if (a.Has("lora-rank")) {
    auto v = IntFlag(a, "lora-rank");
    if (!v.ok()) return v.status();
    r.mutable_lora()->set_rank(static_cast<int32_t>(*v));
  }
  if (a.Has("lora-alpha")) {
    auto v = DoubleFlag(a, "lora-alpha");
    if (!v.ok()) return v.status();
    r.mutable_lora()->set_alpha(*v);
  }
  if (a.Has("lora-dropout")) {
    auto v = DoubleFlag(a, "lora-dropout");
    if (!v.ok()) return v.status();
    r.mutable_lora()->set_dropout(*v);
  }
  if (a.Has("lora-target-modules")) {
    for (absl::string_view m :
         absl::StrSplit(*a.Get("lora-target-modules"), ',', absl::SkipEmpty())) {
      r.mutable_lora()->add_target_modules(std::string(m));
    }
  }
  if (a.Has("lora-dora")) r.mutable_lora()->set_use_dora(true);
  if (a.Has("lora-layers")) {
    for (absl::string_view l :
         absl::StrSplit(*a.Get("lora-layers"), ',', absl::SkipEmpty())) {
      int32_t layer = 0;
      if (!absl::SimpleAtoi(l, &layer)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--lora-layers: \"", l, "\" is not a layer index"));
      }
      r.mutable_lora()->add_layers_to_transform(layer);
    }
  }
  // What full fine-tuning trains (lathed checks the names).
  for (const auto& [flag, list] :
       {std::pair<const char*,
                  google::protobuf::RepeatedPtrField<std::string>*>{
            "layers", r.mutable_trainable()->mutable_layers()},
        {"modules", r.mutable_trainable()->mutable_modules()}}) {
    if (!a.Has(flag)) continue;
    for (absl::string_view v :
         absl::StrSplit(*a.Get(flag), ',', absl::SkipEmpty())) {
      list->Add(std::string(v));
    }
  }
  if (a.Has("lisa-layers") || a.Has("lisa-interval")) {
    v1::Lisa* lisa = r.mutable_trainable()->mutable_lisa();
    if (a.Has("lisa-layers")) {
      auto v = IntFlag(a, "lisa-layers");
      if (!v.ok()) return v.status();
      lisa->set_activated_layers(static_cast<int32_t>(*v));
    }
    if (a.Has("lisa-interval")) {
      auto v = IntFlag(a, "lisa-interval");
      if (!v.ok()) return v.status();
      lisa->set_interval_steps(static_cast<int32_t>(*v));
    }
  }
  const bool half_ft = a.Has("half-ft") || a.Has("half-ft-reselect") ||
                       a.Has("half-ft-fraction") ||
                       a.Has("half-ft-include-embeddings");
  if (half_ft) {
    v1::HalfFt* half = r.mutable_trainable()->mutable_half_ft();
    if (a.Has("half-ft-fraction")) {
      auto v = DoubleFlag(a, "half-ft-fraction");
      if (!v.ok()) return v.status();
      half->set_fraction(*v);
    }
    if (a.Has("half-ft-include-embeddings")) half->set_include_embeddings(true);
    if (a.Has("half-ft-reselect")) {
      const std::string reselect = *a.Get("half-ft-reselect");
      if (reselect == "stage") {
        half->set_reselect(v1::HALF_FT_RESELECT_STAGE);
      } else if (reselect == "epoch") {
        half->set_reselect(v1::HALF_FT_RESELECT_EPOCH);
      } else {
        return absl::InvalidArgumentError(
            "--half-ft-reselect: use stage or epoch");
      }
    }
  }
  if (!a.Has("layers") && !a.Has("modules") && !a.Has("lisa-layers") &&
      !a.Has("lisa-interval") && !half_ft) {
    r.clear_trainable();  // the loop above made an empty one
  }
  if (a.Has("seed")) {
    auto v = IntFlag(a, "seed");
    if (!v.ok()) return v.status();
    r.set_seed(*v);
  }
  auto metadata = MetadataFlags(a);
  if (!metadata.ok()) return metadata.status();
  r.mutable_metadata()->insert(metadata->begin(), metadata->end());
  if (a.Has("priority")) {
    std::string p = *a.Get("priority");
    if (p == "low") r.set_priority(v1::JOB_PRIORITY_LOW);
    else if (p == "normal") r.set_priority(v1::JOB_PRIORITY_NORMAL);
    else if (p == "high") r.set_priority(v1::JOB_PRIORITY_HIGH);
    else return absl::InvalidArgumentError("--priority: use low, normal or high");
  }
  if (a.Has("devices")) {
    auto v = IntFlag(a, "devices");
    if (!v.ok()) return v.status();
    r.set_devices(static_cast<int32_t>(*v));
  }
  if (absl::Status st = MixtureAndMaskFlags(a, r); !st.ok()) return st;
  if (absl::Status st = DmtFlags(a, r); !st.ok()) return st;
  return r;
}

int FilesCommand(Env& env, const std::string& verb) {
  const auto& pos = env.args.positional();
  if (verb == "analyze") {
    // A data analysis job (AnalyzeMethod) over the file.
    if (pos.size() != 3) return Usage("files analyze needs FILE_ID");
    v1::CreateJobRequest r;
    r.set_model(env.args.GetOr("model", ""));
    r.set_training_file(pos[2]);
    r.set_validation_file(env.args.GetOr("validation-file", ""));
    r.mutable_method()->set_type("analyze");
    v1::AnalyzeMethod& a = *r.mutable_method()->mutable_analyze();
    if (env.args.Has("max-seq-len")) {
      auto v = IntFlag(env.args, "max-seq-len");
      if (!v.ok()) return Usage(std::string(v.status().message()));
      a.set_max_seq_len(static_cast<int32_t>(*v));
    }
    if (env.args.Has("select-loss-quantile")) {
      std::vector<std::string> parts = absl::StrSplit(*env.args.Get("select-loss-quantile"), ',');
      double lo = 0, hi = 0;
      if (parts.size() != 2 || !absl::SimpleAtod(parts[0], &lo) || !absl::SimpleAtod(parts[1], &hi)) {
        return Usage("--select-loss-quantile: LO,HI, e.g. 0.05,0.95");
      }
      a.set_loss_quantile_low(lo);
      a.set_loss_quantile_high(hi);
    }
    a.set_keep_duplicates(env.args.Has("keep-duplicates"));
    // Numbers are set only when given: the server resolves the rest.
    auto set_int = [&](const char* name, auto set) -> bool {
      if (!env.args.Has(name)) return true;
      auto v = IntFlag(env.args, name);
      if (v.ok()) set(*v);
      return v.ok();
    };
    auto set_double = [&](const char* name, auto set) -> bool {
      if (!env.args.Has(name)) return true;
      auto v = DoubleFlag(env.args, name);
      if (v.ok()) set(*v);
      return v.ok();
    };
    const std::string select = env.args.GetOr("select", "");
    if (select == "loss_quantile") {
      a.set_selection(v1::ANALYZE_SELECTION_LOSS_QUANTILE);
    } else if (select == "got_d") {
      a.set_selection(v1::ANALYZE_SELECTION_GOT_D);
      v1::GotDSelection& g = *a.mutable_got_d();
      g.set_target_file(env.args.GetOr("target", ""));
      if (!set_int("budget", [&](int64_t v) { g.set_budget(v); }) ||
          !set_double("epsilon-fraction", [&](double v) { g.set_epsilon_fraction(v); })) {
        return Usage("--budget and --epsilon-fraction take numbers");
      }
    } else if (select == "clear") {
      a.set_selection(v1::ANALYZE_SELECTION_CLEAR);
      v1::ClearSelection& c = *a.mutable_clear();
      const std::string score = env.args.GetOr("score", "");
      if (score == "confidence") {
        c.set_score(v1::CLEAR_SCORE_CONFIDENCE);
      } else if (score == "log_likelihood") {
        c.set_score(v1::CLEAR_SCORE_LOG_LIKELIHOOD);
      } else if (!score.empty()) {
        return Usage("--score: confidence or log_likelihood");
      }
      if (!set_double("threshold", [&](double v) { c.set_threshold(v); }) ||
          !set_double("drop-fraction", [&](double v) { c.set_drop_fraction(v); }) ||
          !set_double("alpha", [&](double v) { c.set_alpha(v); }) ||
          !set_int("samples", [&](int64_t v) { c.set_samples(static_cast<int32_t>(v)); }) ||
          !set_double("temperature", [&](double v) { c.set_temperature(v); }) ||
          !set_int("max-new-tokens",
                   [&](int64_t v) { c.set_max_new_tokens(static_cast<int32_t>(v)); })) {
        return Usage(
            "--threshold, --drop-fraction, --alpha, --samples, --temperature and "
            "--max-new-tokens take numbers");
      }
      c.set_answer_extractor(env.args.GetOr("answer-extractor", ""));
      c.set_answer_pattern(env.args.GetOr("answer-pattern", ""));
    } else if (!select.empty()) {
      return Usage("--select: loss_quantile, got_d or clear");
    }
    if (!set_int("batch-size", [&](int64_t v) { a.set_batch_size(static_cast<int32_t>(v)); })) {
      return Usage("--batch-size takes a number");
    }
    auto job = env.client->CreateJob(r);
    if (!job.ok()) return Fail(job.status());
    env.json ? void(std::cout << ToJson(*job) << "\n") : PrintJob(*job);
    return 0;
  }
  if (verb == "upload") {
    if (pos.size() != 3) return Usage("files upload needs PATH");
    auto f = env.client->UploadFile(pos[2], env.args.GetOr("purpose", "fine-tune"),
                                    ProgressLine(absl::StrCat("uploading ", pos[2])));
    if (!f.ok()) return Fail(f.status());
    env.json ? void(std::cout << ToJson(*f) << "\n") : PrintFile(*f);
    return 0;
  }
  if (verb == "get") {
    if (pos.size() != 3) return Usage("files get needs FILE_ID");
    auto f = env.client->GetFile(pos[2]);
    if (!f.ok()) return Fail(f.status());
    env.json ? void(std::cout << ToJson(*f) << "\n") : PrintFile(*f);
    return 0;
  }
  if (verb == "list") {
    v1::ListFilesRequest r;
    if (env.args.Has("limit")) {
      auto v = IntFlag(env.args, "limit");
      if (!v.ok()) return Fail(v.status());
      r.set_limit(static_cast<int32_t>(*v));
    }
    r.set_after(env.args.GetOr("after", ""));
    auto page = env.client->ListFiles(r);
    if (!page.ok()) return Fail(page.status());
    if (env.json) {
      std::cout << ToJson(*page) << "\n";
    } else {
      for (const auto& f : page->data()) PrintFile(f);
      if (page->has_more()) std::cout << "(more: --after " << page->data().rbegin()->id() << ")\n";
    }
    return 0;
  }
  if (verb == "delete") {
    if (pos.size() != 3) return Usage("files delete needs FILE_ID");
    auto st = env.client->DeleteFile(pos[2]);
    if (!st.ok()) return Fail(st);
    std::cout << (env.json ? absl::StrCat("{\"id\": \"", pos[2], "\", \"deleted\": true}")
                           : absl::StrCat("deleted ", pos[2]))
              << "\n";
    return 0;
  }
  if (verb == "download") {
    if (pos.size() != 3) return Usage("files download needs FILE_ID");
    auto out = env.args.Get("out");
    if (!out) return Usage("files download needs --out PATH");
    auto st = env.client->DownloadFile(pos[2], *out, ProgressLine("downloading"));
    if (!st.ok()) return Fail(st);
    std::cout << *out << "\n";
    return 0;
  }
  return Usage(absl::StrCat("unknown command: files ", verb));
}

void PrintModel(const v1::Model& m) {
  if (m.kind() == "base") {
    std::cout << absl::StrFormat("%-24s base        %-18s %6.1fM params  %s  %s\n", m.id(),
                                 m.architecture(), m.parameter_count() / 1e6,
                                 HumanBytes(m.bytes()), m.path());
  } else {
    std::cout << absl::StrFormat("%-24s fine-tuned  base %s, job %s\n", m.id(),
                                 m.base_model(), m.job_id());
  }
}

int ModelsCommand(Env& env, const std::string& verb) {
  const auto& pos = env.args.positional();
  auto show = [&](const absl::StatusOr<v1::Model>& m) {
    if (!m.ok()) return Fail(m.status());
    env.json ? void(std::cout << ToJson(*m) << "\n") : PrintModel(*m);
    return 0;
  };
  if (verb == "register") {
    if (pos.size() != 4) return Usage("models register needs NAME FOLDER");
    return show(env.client->RegisterModel(pos[2], pos[3]));
  }
  if (verb == "get") {
    if (pos.size() != 3) return Usage("models get needs MODEL_ID");
    return show(env.client->GetModel(pos[2]));
  }
  if (verb == "delete") {
    if (pos.size() != 3) return Usage("models delete needs MODEL_ID");
    if (auto st = env.client->DeleteModel(pos[2]); !st.ok()) return Fail(st);
    std::cout << "deleted " << pos[2] << "\n";
    return 0;
  }
  if (verb == "list") {
    auto all = env.client->ListModels();
    if (!all.ok()) return Fail(all.status());
    if (env.json) {
      std::cout << ToJson(*all) << "\n";
    } else {
      for (const auto& m : all->data()) PrintModel(m);
    }
    return 0;
  }
  return Usage(absl::StrCat("unknown command: models ", verb));
}

void PrintKey(const v1::ApiKey& k) {
  std::cout << absl::StrFormat("%s  project %-16s %-5s %s%s\n", k.id(), k.project(),
                               k.role(), FormatTime(k.created_at()),
                               k.revoked_at() ? "  REVOKED" : "");
}

int AdminCommand(Env& env, const std::string& noun) {
  const auto& pos = env.args.positional();
  if (noun != "keys" || pos.size() < 3) return Usage("admin: use admin keys create|list|revoke");
  const std::string& verb = pos[2];
  if (verb == "create") {
    v1::CreateApiKeyRequest r;
    r.set_project(env.args.GetOr("project", ""));
    r.set_role(env.args.GetOr("role", "user"));
    r.set_name(env.args.GetOr("name", ""));
    auto key = env.client->CreateApiKey(r);
    if (!key.ok()) return Fail(key.status());
    if (env.json) {
      std::cout << ToJson(*key) << "\n";
    } else {
      PrintKey(*key);
      std::cout << "secret (shown once, keep it safe): " << key->secret() << "\n";
    }
    return 0;
  }
  if (verb == "list") {
    auto keys = env.client->ListApiKeys(env.args.GetOr("project", ""));
    if (!keys.ok()) return Fail(keys.status());
    if (env.json) {
      std::cout << ToJson(*keys) << "\n";
    } else {
      for (const auto& k : keys->data()) PrintKey(k);
    }
    return 0;
  }
  if (verb == "revoke") {
    if (pos.size() != 4) return Usage("admin keys revoke needs KEY_ID");
    auto key = env.client->RevokeApiKey(pos[3]);
    if (!key.ok()) return Fail(key.status());
    env.json ? void(std::cout << ToJson(*key) << "\n") : PrintKey(*key);
    return 0;
  }
  return Usage(absl::StrCat("unknown command: admin keys ", verb));
}

void PrintWebhook(const v1::Webhook& w) {
  std::cout << absl::StrFormat("%s  %s  %s  %s%s\n", w.id(), FormatTime(w.created_at()),
                               EscapeControlChars(w.url()),
                               absl::StrJoin(w.event_types(), ","),
                               w.description().empty()
                                   ? ""
                                   : "  " + EscapeControlChars(w.description()));
}

std::string DeliveryStatusName(v1::WebhookDeliveryStatus s) {
  return EnumSuffix(v1::WebhookDeliveryStatus_Name(s), "WEBHOOK_DELIVERY_STATUS_");
}

void PrintDelivery(const v1::WebhookDelivery& d) {
  std::string line = absl::StrFormat("%s  %s  %-26s %s  %-9s attempts %d", d.id(),
                                     FormatTime(d.created_at()), d.event_type(), d.job_id(),
                                     DeliveryStatusName(d.status()), d.attempts());
  if (d.status() == v1::WEBHOOK_DELIVERY_STATUS_PENDING) {
    absl::StrAppend(&line, "  next attempt ", FormatTime(d.next_attempt_at()));
  }
  if (d.status() == v1::WEBHOOK_DELIVERY_STATUS_DELIVERED) {
    absl::StrAppend(&line, "  delivered ", FormatTime(d.delivered_at()), " (HTTP ",
                    d.last_response_code(), ")");
  }
  if (!d.last_error().empty()) {
    absl::StrAppend(&line, "  last error: ", EscapeControlChars(d.last_error()));
  }
  std::cout << line << "\n";
}

int WebhooksCommand(Env& env, const std::string& verb) {
  const auto& pos = env.args.positional();
  if (verb == "create") {
    v1::CreateWebhookRequest r;
    r.set_url(env.args.GetOr("url", ""));
    for (const std::string& t : env.args.Values("event-type")) r.add_event_types(t);
    r.set_description(env.args.GetOr("description", ""));
    auto w = env.client->CreateWebhook(r);
    if (!w.ok()) return Fail(w.status());
    if (env.json) {
      std::cout << ToJson(*w) << "\n";
    } else {
      PrintWebhook(*w);
      std::cout << "secret (shown once; verify each delivery's webhook-signature with it): "
                << w->secret() << "\n";
    }
    return 0;
  }
  if (verb == "list") {
    v1::ListWebhooksRequest r;
    if (env.args.Has("limit")) {
      auto v = IntFlag(env.args, "limit");
      if (!v.ok()) return Fail(v.status());
      r.set_limit(static_cast<int32_t>(*v));
    }
    r.set_after(env.args.GetOr("after", ""));
    auto page = env.client->ListWebhooks(r);
    if (!page.ok()) return Fail(page.status());
    if (env.json) {
      std::cout << ToJson(*page) << "\n";
    } else {
      for (const auto& w : page->data()) PrintWebhook(w);
      if (page->has_more()) std::cout << "(more: --after " << page->data().rbegin()->id() << ")\n";
    }
    return 0;
  }
  if (verb == "delete") {
    if (pos.size() != 3) return Usage("webhooks delete needs WEBHOOK_ID");
    absl::Status st = env.client->DeleteWebhook(pos[2]);
    if (!st.ok()) return Fail(st);
    std::cout << (env.json ? absl::StrCat("{\"id\": \"", pos[2], "\", \"deleted\": true}")
                           : absl::StrCat("deleted ", pos[2]))
              << "\n";
    return 0;
  }
  if (verb == "deliveries") {
    if (pos.size() != 3) return Usage("webhooks deliveries needs WEBHOOK_ID");
    v1::ListWebhookDeliveriesRequest r;
    r.set_webhook_id(pos[2]);
    if (env.args.Has("limit")) {
      auto v = IntFlag(env.args, "limit");
      if (!v.ok()) return Fail(v.status());
      r.set_limit(static_cast<int32_t>(*v));
    }
    r.set_after(env.args.GetOr("after", ""));
    auto page = env.client->ListWebhookDeliveries(r);
    if (!page.ok()) return Fail(page.status());
    if (env.json) {
      std::cout << ToJson(*page) << "\n";
    } else {
      for (const auto& d : page->data()) PrintDelivery(d);
      if (page->has_more()) std::cout << "(more: --after " << page->data().rbegin()->id() << ")\n";
    }
    return 0;
  }
  return Usage(absl::StrCat("unknown command: webhooks ", verb));
}

int WaitCommand(Env& env, const std::string& job_id) {
  absl::Time deadline = absl::InfiniteFuture();
  if (env.args.Has("timeout")) {
    auto v = IntFlag(env.args, "timeout");
    if (!v.ok()) return Fail(v.status());
    deadline = absl::Now() + absl::Seconds(*v);
  }
  auto st = env.client->WatchJob(job_id, "", [&](const v1::WatchJobResponse& u) {
    if (!env.json && u.event().status() != v1::JOB_STATUS_UNSPECIFIED) {
      std::cerr << job_id << ": " << StatusName(u.event().status()) << "\n";
    }
  }, deadline);
  if (!st.ok()) {
    if (st.code() == absl::StatusCode::kDeadlineExceeded) {
      std::cerr << "error: still not finished after --timeout; `lathe jobs get "
                << job_id << "` shows where it is\n";
      return 1;
    }
    return Fail(st);
  }
  auto job = env.client->GetJob(job_id);
  if (!job.ok()) return Fail(job.status());
  env.json ? void(std::cout << ToJson(*job) << "\n") : PrintJob(*job);
  return job->status() == v1::JOB_STATUS_SUCCEEDED ? 0 : 1;
}

int EventsCommand(Env& env, const std::string& job_id, bool follow) {
  std::string after = env.args.GetOr("after", "");
  auto print = [&](const v1::JobEvent& e) {
    env.json ? void(std::cout << ToJsonLine(e) << std::endl) : PrintEvent(e);
  };
  if (follow) {
    auto st = env.client->WatchJob(job_id, after, [&](const v1::WatchJobResponse& u) {
      print(u.event());
    });
    return st.ok() ? 0 : Fail(st);
  }
  v1::ListJobEventsRequest r;
  r.set_job_id(job_id);
  r.set_after(after);
  if (env.args.Has("limit")) {
    auto v = IntFlag(env.args, "limit");
    if (!v.ok()) return Fail(v.status());
    r.set_limit(static_cast<int32_t>(*v));
  }
  auto page = env.client->ListJobEvents(r);
  if (!page.ok()) return Fail(page.status());
  if (env.json) {
    std::cout << ToJson(*page) << "\n";
  } else {
    for (const auto& e : page->data()) print(e);
    if (page->has_more()) {
      std::cout << "(more: --after " << page->data().rbegin()->id() << ")\n";
    }
  }
  return 0;
}

// lathe merges create: a merge job (MergeMethod) over fine-tuned models.
absl::StatusOr<v1::CreateJobRequest> BuildMerge(const Args& a) {
  v1::CreateJobRequest r;
  r.set_model(a.GetOr("base", ""));
  r.set_validation_file(a.GetOr("validation-file", ""));
  r.set_suffix(a.GetOr("suffix", ""));
  r.mutable_method()->set_type("merge");
  v1::MergeMethod& m = *r.mutable_method()->mutable_merge();
  for (absl::string_view input : absl::StrSplit(a.GetOr("inputs", ""), ',', absl::SkipEmpty())) {
    m.add_inputs(std::string(input));
  }
  m.set_merge_method(a.GetOr("method", ""));
  for (absl::string_view w : absl::StrSplit(a.GetOr("weights", ""), ',', absl::SkipEmpty())) {
    double v = 0;
    if (!absl::SimpleAtod(w, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("--weights: \"", w, "\" is not a number"));
    }
    m.add_weights(v);
  }
  struct Number {
    const char* flag;
    void (v1::MergeMethod::*set)(double);
  };
  for (const Number& n : {Number{"lambda", &v1::MergeMethod::set_lambda},
                          {"density", &v1::MergeMethod::set_density},
                          {"beta", &v1::MergeMethod::set_beta},
                          {"gamma", &v1::MergeMethod::set_gamma},
                          {"lines-alpha", &v1::MergeMethod::set_lines_alpha},
                          {"lines-beta", &v1::MergeMethod::set_lines_beta}}) {
    if (!a.Has(n.flag)) continue;
    auto v = DoubleFlag(a, n.flag);
    if (!v.ok()) return v.status();
    (m.*n.set)(*v);
  }
  m.set_majority_sign(a.GetOr("majority-sign", ""));
  if (a.Has("lora-rank")) {
    auto v = IntFlag(a, "lora-rank");
    if (!v.ok()) return v.status();
    m.set_lora_rank(static_cast<int32_t>(*v));
  }
  for (absl::string_view t :
       absl::StrSplit(a.GetOr("lora-target-modules", ""), ',', absl::SkipEmpty())) {
    m.add_lora_target_modules(std::string(t));
  }
  if (a.Has("seed")) {
    auto v = IntFlag(a, "seed");
    if (!v.ok()) return v.status();
    r.set_seed(*v);
  }
  return r;
}

int MergesCommand(Env& env, const std::string& verb) {
  if (verb != "create") return Usage(absl::StrCat("unknown merges command: ", verb));
  auto r = BuildMerge(env.args);
  if (!r.ok()) return Usage(std::string(r.status().message()));
  auto job = env.client->CreateJob(*r);
  if (!job.ok()) return Fail(job.status());
  env.json ? void(std::cout << ToJson(*job) << "\n") : PrintJob(*job);
  return 0;
}

int JobsCommand(Env& env, const std::string& verb) {
  const auto& pos = env.args.positional();
  auto print_job = [&](const absl::StatusOr<v1::Job>& j) {
    if (!j.ok()) return Fail(j.status());
    env.json ? void(std::cout << ToJson(*j) << "\n") : PrintJob(*j);
    return 0;
  };
  if (verb == "create") {
    auto r = BuildCreate(env.args);
    if (!r.ok()) return Usage(std::string(r.status().message()));
    return print_job(env.client->CreateJob(*r));
  }
  if (verb == "list") {
    v1::ListJobsRequest r;
    if (env.args.Has("limit")) {
      auto v = IntFlag(env.args, "limit");
      if (!v.ok()) return Fail(v.status());
      r.set_limit(static_cast<int32_t>(*v));
    }
    r.set_after(env.args.GetOr("after", ""));
    auto metadata = MetadataFlags(env.args);
    if (!metadata.ok()) return Usage(std::string(metadata.status().message()));
    r.mutable_metadata()->insert(metadata->begin(), metadata->end());
    if (env.args.Has("status")) {
      v1::JobStatus s = StatusFromName(*env.args.Get("status"));
      if (s == v1::JOB_STATUS_UNSPECIFIED) return Usage("--status: unknown status");
      r.set_status(s);
    }
    auto page = env.client->ListJobs(r);
    if (!page.ok()) return Fail(page.status());
    if (env.json) {
      std::cout << ToJson(*page) << "\n";
      return 0;
    }
    for (const auto& j : page->data()) {
      std::cout << absl::StrFormat("%s  %-16s %-20s %s  %s\n", j.id(),
                                   StatusName(j.status()), j.model(),
                                   FormatTime(j.created_at()), j.fine_tuned_model());
    }
    if (page->has_more()) std::cout << "(more: --after " << page->data().rbegin()->id() << ")\n";
    return 0;
  }
  if (pos.size() != 3) return Usage(absl::StrCat("jobs ", verb, " needs JOB_ID"));
  const std::string& id = pos[2];
  if (verb == "get") return print_job(env.client->GetJob(id));
  if (verb == "cancel") return print_job(env.client->CancelJob(id));
  if (verb == "pause") return print_job(env.client->PauseJob(id));
  if (verb == "resume") return print_job(env.client->ResumeJob(id));
  if (verb == "events") return EventsCommand(env, id, env.args.Has("follow"));
  if (verb == "watch") return EventsCommand(env, id, /*follow=*/true);
  if (verb == "checkpoints") {
    auto all = env.client->ListJobCheckpoints(id);
    if (!all.ok()) return Fail(all.status());
    if (env.json) {
      std::cout << ToJson(*all) << "\n";
      return 0;
    }
    for (const auto& c : all->data()) {
      std::cout << absl::StrFormat("step %-6d train_loss %.4f  acc %.3f", c.step_number(),
                                   c.metrics().train_loss(),
                                   c.metrics().train_mean_token_accuracy());
      if (c.metrics().has_valid_loss()) {
        std::cout << absl::StrFormat("  valid_loss %.4f", c.metrics().valid_loss());
      }
      for (const auto& [name, value] : std::map<std::string, double>(
               c.metrics().values().begin(), c.metrics().values().end())) {
        std::cout << absl::StrFormat("  %s %.4f", name, value);
      }
      std::cout << "  " << FormatTime(c.created_at()) << "\n";
    }
    return 0;
  }
  if (verb == "wait") return WaitCommand(env, id);
  if (verb == "download") {
    auto out = env.args.Get("out");
    if (!out) return Usage("jobs download needs --out DIR");
    absl::StatusOr<std::vector<std::string>> files;
    if (env.args.Has("checkpoint")) {
      int64_t step = 0;
      std::string which = *env.args.Get("checkpoint");
      if (which != "latest" && (!absl::SimpleAtoi(which, &step) || step <= 0)) {
        return Usage("--checkpoint: a step number or \"latest\"");
      }
      files = env.client->DownloadCheckpoint(id, step, *out,
                                             ProgressLine("downloading checkpoint"));
    } else {
      files = env.client->DownloadAdapter(id, *out, ProgressLine("downloading adapter"));
    }
    if (!files.ok()) return Fail(files.status());
    if (env.json) {
      std::cout << "{\"files\": [";
      for (size_t i = 0; i < files->size(); ++i) {
        std::cout << (i ? ", " : "") << "\"" << (*files)[i] << "\"";
      }
      std::cout << "]}\n";
    } else {
      for (const auto& f : *files) std::cout << f << "\n";
    }
    return 0;
  }
  return Usage(absl::StrCat("unknown command: jobs ", verb));
}

}  // namespace

int Run(const std::vector<std::string>& argv) {
  auto args =
      Args::Parse(argv, {"follow", "help", "insecure", "lora-rslora",
                         "lora-dora", "half-ft", "half-ft-include-embeddings", "no-gold",
                         "no-accumulate",
                         "general-all-tokens", "keep-duplicates"});
  if (!args.ok()) return Usage(std::string(args.status().message()));
  auto st = args->CheckKnown({"server",
                              "api_key",
                              "ca_cert",
                              "tls_server_name",
                              "insecure",
                              "project",
                              "role",
                              "name",
                              "output",
                              "help",
                              "purpose",
                              "limit",
                              "after",
                              "status",
                              "follow",
                              "timeout",
                              "out",
                              "model",
                              "training-file",
                              "validation-file",
                              "n-epochs",
                              "batch-size",
                              "learning-rate-multiplier",
                              "lora-rank",
                              "lora-alpha",
                              "lora-dropout",
                              "lora-target-modules",
                              "lora-rslora",
                              "suffix",
                              "seed",
                              "metadata",
                              "idempotency-key",
                              "priority",
                              "devices",
                              "checkpoint",
                              "method",
                              "warmup-steps",
                              "lr-scheduler",
                              "weight-decay",
                              "gradient-accumulation-steps",
                              "max-seq-len",
                              "max-grad-norm",
                              "eval-every-steps",
                              "checkpoint-every-steps",
                              "adapter",
                              "beta",
                              "loss-type",
                              "label-smoothing",
                              "rpo-alpha",
                              "max-prompt-len",
                              "num-virtual-tokens",
                              "prompt-init",
                              "prompt-init-text",
                              "lora-dora",
                              "lora-layers",
                              "layers",
                              "modules",
                              "lisa-layers",
                              "lisa-interval",
                              "half-ft",
                              "half-ft-reselect",
                              "half-ft-fraction",
                              "half-ft-include-embeddings",
                              "mixture",
                              "mixture-strategy",
                              "mixture-temperature",
                              "mixture-stop",
                              "regularizer",
                              "masked-thought",
                              "mask-token",
                              "dmt",
                              "dmt-k",
                              "general-file",
                              "general-all-tokens",
                              "intruder-top-k",
                              "intruder-epsilon",
                              "intruder-mitigation-lambda",
                              "base",
                              "inputs",
                              "weights",
                              "lambda",
                              "density",
                              "majority-sign",
                              "gamma",
                              "lines-alpha",
                              "lines-beta",
                              "select-loss-quantile",
                              "keep-duplicates",
                              "select",
                              "target",
                              "budget",
                              "epsilon-fraction",
                              "score",
                              "threshold",
                              "drop-fraction",
                              "alpha",
                              "samples",
                              "temperature",
                              "iterations",
                              "samples-per-prompt",
                              "sample-temperature",
                              "sample-top-p",
                              "max-new-tokens",
                              "answer-extractor",
                              "answer-pattern",
                              "dedupe",
                              "no-gold",
                              "rft-init",
                              "no-accumulate",
                              "s2ft-d-ratio",
                              "s2ft-u-ratio",
                              "s2ft-o-ratio",
                              "s2ft-v-ratio",
                              "s2ft-seed",
                              "url",
                              "event-type",
                              "description"});
  if (!st.ok()) return Usage(std::string(st.message()));
  const auto& pos = args->positional();
  if (args->Has("help") || pos.size() < 2) {
    std::cout << kUsage;
    return args->Has("help") ? 0 : 2;
  }
  std::string output = args->GetOr("output", "text");
  if (output != "text" && output != "json") return Usage("-o: use text or json");
  const char* env_server = std::getenv("LATHE_SERVER");
  std::string server = args->GetOr("server", env_server ? env_server : "127.0.0.1:7070");
  const char* env_key = std::getenv("LATHE_API_KEY");
  ChannelTls tls;
  const char* env_ca = std::getenv("LATHE_CA_CERT");
  tls.ca_file = args->GetOr("ca_cert", env_ca ? env_ca : "");
  tls.server_name = args->GetOr("tls_server_name", "");
  const char* env_insecure = std::getenv("LATHE_INSECURE");
  tls.insecure = args->Has("insecure") ||
                 (env_insecure != nullptr && std::string(env_insecure) == "1");
  auto client = Client::Connect(server, args->GetOr("api_key", env_key ? env_key : ""), tls);
  if (!client.ok()) return Fail(client.status());
  Env env{*args, client->get(), output == "json"};
  if (pos[0] == "files") return FilesCommand(env, pos[1]);
  if (pos[0] == "jobs") return JobsCommand(env, pos[1]);
  if (pos[0] == "merges") return MergesCommand(env, pos[1]);
  if (pos[0] == "models") return ModelsCommand(env, pos[1]);
  if (pos[0] == "admin") return AdminCommand(env, pos[1]);
  if (pos[0] == "webhooks") return WebhooksCommand(env, pos[1]);
  return Usage(absl::StrCat("unknown command: ", pos[0]));
}

}  // namespace lathe::cli
