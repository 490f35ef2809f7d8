// moshi-ttt synth-data: writes a synthetic token dataset with long-range structure (train/synthetic.h:
// motifs, lexicon or repeat), the data of `demo`, with its sizes set from the command line. Useful to
// test a training or evaluation set-up on a task whose answer is known: e.g. train at one length and
// score at another (context extension, YaRN), or check that a TTT layer uses memory beyond its window.
#include <cstdio>
#include <filesystem>

#include "io/safetensors.h"
#include "tools/commands.h"
#include "train/data.h"
#include "train/synthetic.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::cli {

void add_synth_data(CLI::App& app) {
  struct Opts {
    std::string out;
    train::SyntheticConfig s;
    bool force = false;
    bool masks = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand(
      "synth-data",
      "write a synthetic token dataset (motifs, lexicon, repeat) with long-range structure, as the demo's");
  sub->add_option("out", o->out, "output folder (index.jsonl + one .safetensors per file)")->required();
  sub->add_option("--pattern", o->s.pattern, "motifs, lexicon or repeat (see src/train/synthetic.h)")
      ->capture_default_str();
  sub->add_option("--files", o->s.num_files, "number of files")->capture_default_str();
  sub->add_option("--frames", o->s.frames, "frames per file (12.5 per second)")->capture_default_str();
  sub->add_option("--streams", o->s.streams, "streams per file: text + audio codebooks (tiny preset: 5)")
      ->capture_default_str();
  sub->add_option("--text-vocab", o->s.text_vocab, "text ids drawn from [0, N)")->capture_default_str();
  sub->add_option("--audio-vocab", o->s.audio_vocab, "audio ids drawn from [0, N)")->capture_default_str();
  sub->add_option("--motif-len", o->s.motif_len, "motifs: frames per motif")->capture_default_str();
  sub->add_option("--num-motifs", o->s.num_motifs, "motifs: motifs per file")->capture_default_str();
  sub->add_option("--repeat-prob", o->s.repeat_prob, "motifs: probability that an occurrence starts at a free frame")
      ->capture_default_str();
  sub->add_option("--min-gap", o->s.min_gap, "motifs: frames between occurrences of a motif; lexicon: recall distance")
      ->capture_default_str();
  sub->add_option("--follow-prob", o->s.follow_prob,
                  "lexicon: probability that a text frame follows the file's permutation")
      ->capture_default_str();
  sub->add_option("--seed", o->s.seed, "seed (file i depends only on the seed and i)")->capture_default_str();
  sub->add_flag("--masks", o->masks,
                "also write recall.safetensors: recall [files, frames] (1 on frames only memory predicts)");
  sub->add_flag("--force", o->force, "write into a folder that already holds an index.jsonl");
  set_handler(sub, [o]() {
    const fs::path index = fs::path(o->out) / "index.jsonl";
    MT_CHECK(o->force || !fs::exists(index), index.string(), " exists (use --force to overwrite)");
    MT_CHECK(o->s.num_files >= 1, "synth-data: --files must be >= 1, got ", o->s.num_files);
    train::check_synthetic_config(o->s);
    std::vector<at::Tensor> masks;
    auto files = train::make_synthetic_files(o->s, &masks);
    train::write_token_dataset(o->out, files);
    if (o->masks) {  // [N, T] uint8, row i = file i of the index (safetensors has no bool in every reader)
      const std::vector<std::pair<std::string, at::Tensor>> t = {{"recall", at::stack(masks).to(at::kByte)}};
      io::save((fs::path(o->out) / "recall.safetensors").string(), t, {{"producer", "moshi-ttt synth-data"}});
    }
    int64_t recall = 0, total = 0;
    for (const auto& m : masks) {
      recall += m.sum().item<int64_t>();
      total += m.numel();
    }
    std::printf("wrote %s: %lld %s files of %lld frames x %lld streams; %.1f%% of the frames are recall frames\n",
                index.string().c_str(), (long long)files.size(), o->s.pattern.c_str(), (long long)o->s.frames,
                (long long)o->s.streams,
                total > 0 ? 100.0 * static_cast<double>(recall) / static_cast<double>(total) : 0.0);
    return 0;
  });
}

}  // namespace mt::cli
