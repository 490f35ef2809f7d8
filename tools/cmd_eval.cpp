// moshi-ttt eval: the evaluation suite, writing into a run folder that `moshi-ttt report` reads.
//   eval paired --task swuggy|sblimp|sstory|tstory --data DIR --out RUN   paired-likelihood benchmarks
//   eval long-context --data LIST --out RUN                               loss by position, controls
//   eval ttt-probe --data LIST --out RUN                                  the same run with TTT probes
//   eval make-sets --out DIR                                              synthetic sets (espeak-ng)
#include <cstdio>
#include <sstream>

#include "eval/long_context.h"
#include "eval/paired.h"
#include "eval/paired_task.h"
#include "eval/synthetic_sets.h"
#include "tools/commands.h"
#include "tools/model_args.h"
#include "util/error.h"
#include "util/runtime.h"

namespace mt::cli {

namespace {

struct CodecArgs {
  std::string mimi, mimi_config, cache;
  void add(CLI::App* sub, bool required) {
    auto* o = sub->add_option("--mimi", mimi, "Mimi weights (.safetensors) to encode audio files");
    if (required) o->required();
    sub->add_option("--mimi-config", mimi_config, "Mimi config JSON (default: the released model)");
    sub->add_option("--cache", cache,
                    "where encoded files are cached (default: $MOSHI_TTT_CACHE or ~/.cache/moshi-ttt, /eval-codes)");
  }
  eval::CodecSpec spec(const ModelArgs& m, int64_t codebooks, bool quiet) const {
    eval::CodecSpec s;
    s.weights = mimi;
    s.config = mimi_config;
    s.cache_dir = cache.empty() ? mt::cache_dir("eval-codes") : cache;
    s.device = m.device;
    s.num_codebooks = codebooks;
    s.quiet = quiet;
    return s;
  }
};

void add_scoring(CLI::App* sub, eval::ScoringOptions& s) {
  sub->add_option("--placement", s.placement, "stream of the clip: moshi (streams 1..8) or user")
      ->capture_default_str();
  sub->add_option("--text", s.text, "text stream content: pad (all PAD) or none (absent, textless)")
      ->capture_default_str();
}

std::vector<int64_t> parse_positions(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    int64_t mult = 1;
    if (item.back() == 'k' || item.back() == 'K') {
      mult = 1000;
      item.pop_back();
    }
    try {
      size_t used = 0;
      const int64_t v = std::stoll(item, &used) * mult;
      MT_CHECK(used == item.size() && v >= 1, "");
      out.push_back(v);
    } catch (const std::exception&) {
      fail("--positions: '", item, "' is not a frame count (e.g. 1k,2k,8000)");
    }
  }
  return out;
}

void add_paired(CLI::App* ev) {
  struct Opts {
    ModelArgs model;
    CodecArgs codec;
    eval::PairedTaskOptions task;
  };
  auto o = std::make_shared<Opts>();
  auto* sub =
      ev->add_subcommand("paired", "sWUGGY / sBLIMP / sStoryCloze / tStoryCloze accuracy with the official rule");
  o->model.add(sub);
  o->codec.add(sub, true);
  sub->add_option("--task", o->task.task, "swuggy, sblimp, sstory or tstory")->required();
  sub->add_option("--data", o->task.data, "dataset root in the official layout (or `eval make-sets` output)")
      ->required();
  sub->add_option("--split", o->task.split, "dev or test (test gold is not public: submission only)")
      ->capture_default_str();
  sub->add_option("--out", o->task.out_dir, "run folder (writes eval/<task>/...)")->required();
  sub->add_option("--reduction", o->task.reduction, "mean, sum, semantic or weighted")->capture_default_str();
  add_scoring(sub, o->task.scoring);
  sub->add_option("--batch", o->task.scoring.batch, "clips per forward pass")->capture_default_str();
  sub->add_option("--bootstrap", o->task.bootstrap, "bootstrap resamples of the ids for the 95% interval")
      ->capture_default_str();
  sub->add_option("--seed", o->task.seed, "bootstrap seed")->capture_default_str();
  sub->add_flag("--quiet", o->task.scoring.quiet, "no progress lines");
  set_handler(sub, [o]() {
    std::string origin;
    lm::LMModel m = o->model.build(&origin);
    o->task.model_origin = origin;
    eval::CodesCache cache(
        o->codec.spec(o->model, eval::clip_codebooks(m->cfg, o->task.scoring.placement), o->task.scoring.quiet));
    nlohmann::json s = eval::run_paired_task(*m, cache, o->task);
    std::printf("%s", eval::format_paired_summary(s).c_str());
    std::printf("wrote %s/eval/%s/{summary.json,items.csv,score_*.csv,submission/}\n", o->task.out_dir.c_str(),
                o->task.task.c_str());
    return 0;
  });
}

void add_long_context(CLI::App* ev, const char* name, bool probes) {
  struct Opts {
    ModelArgs model;
    CodecArgs codec;
    eval::LongContextOptions lc;
    std::string data, positions;
    std::vector<std::string> controls;
  };
  auto o = std::make_shared<Opts>();
  o->lc.probes = probes;
  auto* sub =
      ev->add_subcommand(name, probes ? "TTT inner losses l0 / lprev / lafter and |W_t - W_0| by position (with the "
                                        "loss by position of the same run)"
                                      : "loss by position over long files with the state persisting, and controls");
  o->model.add(sub);
  o->codec.add(sub, false);
  sub->add_option("--data", o->data, "a list file (one path per line) or a folder of audio / codes files")->required();
  sub->add_option("--out", o->lc.out_dir, "run folder (writes eval/long_context/...)")->required();
  sub->add_option(
         "--control", o->controls,
         "extra runs to compare with: ttt-reset:N (TTT state reset every N frames), reset:N (all state), no-ttt")
      ->delimiter(',');
  sub->add_option("--positions", o->positions,
                  "windowed means at these frames, e.g. 1k,2k,4k,8k,16k,24k (default: those that fit)");
  sub->add_option("--window", o->lc.window,
                  "window / bin width in frames (0: 1000 for long files, else 1/32 of the longest)")
      ->capture_default_str();
  sub->add_option("--fit-from", o->lc.fit_from, "first frame of the slope fit (0: the attention window when it fits)")
      ->capture_default_str();
  sub->add_option("--loss", o->lc.loss, "headline curve: audio, semantic, weighted or text")->capture_default_str();
  sub->add_option("--chunk", o->lc.chunk, "frames per streaming call")->capture_default_str();
  sub->add_option("--max-frames", o->lc.max_frames, "truncate each file to this many frames (0: whole files)")
      ->capture_default_str();
  add_scoring(sub, o->lc.scoring);
  sub->add_option("--bootstrap", o->lc.bootstrap, "bootstrap resamples of the files")->capture_default_str();
  sub->add_option("--seed", o->lc.seed, "bootstrap seed")->capture_default_str();
  if (!probes) sub->add_flag("--probes", o->lc.probes, "also record the TTT probes (as `eval ttt-probe`)");
  sub->add_flag("--quiet", o->lc.quiet, "no progress lines");
  set_handler(sub, [o]() {
    std::string origin;
    lm::LMModel m = o->model.build(&origin);
    o->lc.model_origin = origin;
    o->lc.variants = {"persist"};
    for (const auto& c : o->controls)
      if (c != "persist") o->lc.variants.push_back(c);
    o->lc.positions = parse_positions(o->positions);
    o->lc.scoring.quiet = o->lc.quiet;
    const std::vector<std::string> files = eval::read_file_list(o->data);
    std::unique_ptr<eval::CodesCache> cache;
    if (!o->codec.mimi.empty())
      cache = std::make_unique<eval::CodesCache>(
          o->codec.spec(o->model, eval::clip_codebooks(m->cfg, o->lc.scoring.placement), o->lc.quiet));
    nlohmann::json s = eval::run_long_context(*m, files, cache.get(), o->lc);
    std::printf("%s", eval::format_long_context_summary(s).c_str());
    std::printf("wrote %s/eval/long_context/{summary.json,curve.csv%s,*.png}\n", o->lc.out_dir.c_str(),
                o->lc.probes ? ",probes.csv" : "");
    return 0;
  });
}

void add_make_sets(CLI::App* ev) {
  struct Opts {
    std::string out;
    eval::SyntheticOptions syn;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = ev->add_subcommand("make-sets",
                                 "write small synthetic sWUGGY / sBLIMP / sStoryCloze / tStoryCloze sets (espeak-ng)");
  sub->add_option("--out", o->out, "dataset root to create")->required();
  sub->add_option("--voices", o->syn.voices, "espeak-ng voices")->delimiter(',');
  sub->add_option("--lexical-words", o->syn.lexical_words, "word / non-word pairs")->capture_default_str();
  sub->add_option("--syntactic-pairs", o->syn.syntactic_pairs, "sentence pairs")->capture_default_str();
  sub->add_option("--stories", o->syn.stories, "story pairs per StoryCloze task")->capture_default_str();
  sub->add_option("--seed", o->syn.seed, "file names and choices")->capture_default_str();
  sub->add_flag("--quiet", o->syn.quiet, "no progress lines");
  set_handler(sub, [o]() {
    eval::SyntheticSummary s = eval::make_synthetic_sets(o->out, o->syn);
    std::printf(
        "wrote synthetic sets (espeak-ng; not comparable to published numbers) to %s: %lld lexical files, %lld "
        "syntactic files, %lld story pairs per StoryCloze task\n",
        o->out.c_str(), (long long)s.lexical_files, (long long)s.syntactic_files, (long long)s.story_pairs);
    return 0;
  });
}

}  // namespace

void add_eval(CLI::App& app) {
  auto* ev =
      app.add_subcommand("eval", "evaluation suite: paired benchmarks, long-context loss, TTT probes, synthetic sets");
  ev->require_subcommand(1);
  add_paired(ev);
  add_long_context(ev, "long-context", false);
  add_long_context(ev, "ttt-probe", true);
  add_make_sets(ev);
}

}  // namespace mt::cli
