#include "train/synthetic.h"

#include <cstdio>
#include <unordered_map>

#include "util/error.h"
#include "util/prng.h"

namespace mt::train {

using util::SplitMix64;

void check_synthetic_config(const SyntheticConfig& c) {
  MT_CHECK(c.pattern == "motifs" || c.pattern == "lexicon" || c.pattern == "repeat",
           "synthetic data: pattern must be motifs, lexicon or repeat, got '", c.pattern, "'");
  MT_CHECK(c.num_files >= 0, "synthetic data: num_files must be >= 0, got ", c.num_files);
  MT_CHECK(c.streams >= 1, "synthetic data: streams must be >= 1, got ", c.streams);
  MT_CHECK(c.motif_len >= 1, "synthetic data: motif_len must be >= 1, got ", c.motif_len);
  MT_CHECK(c.num_motifs >= 1, "synthetic data: num_motifs must be >= 1, got ", c.num_motifs);
  MT_CHECK(c.min_gap >= 0, "synthetic data: min_gap must be >= 0, got ", c.min_gap);
  if (c.pattern == "repeat") {
    MT_CHECK(c.text_vocab >= 1 && c.audio_vocab >= 1, "synthetic data: text_vocab and audio_vocab must be >= 1");
    MT_CHECK(c.frames >= 2 && c.frames % 2 == 0, "synthetic data: repeat needs an even number of frames >= 2, got ",
             c.frames);
    return;
  }
  if (c.pattern == "lexicon") {
    MT_CHECK(c.text_vocab >= 2, "synthetic data: text_vocab must be >= 2, got ", c.text_vocab);
    MT_CHECK(c.audio_vocab >= 1, "synthetic data: audio_vocab must be >= 1, got ", c.audio_vocab);
    MT_CHECK(c.follow_prob >= 0.0 && c.follow_prob <= 1.0, "synthetic data: follow_prob must be in [0, 1], got ",
             c.follow_prob);
    MT_CHECK(c.frames >= 2, "synthetic data: frames must be >= 2 for a transition, got ", c.frames);
    return;
  }
  // Cue tokens take text ids 0..num_motifs-1; noise and motif text need at least one more id.
  MT_CHECK(c.text_vocab > c.num_motifs, "synthetic data: text_vocab (", c.text_vocab, ") must exceed num_motifs (",
           c.num_motifs, "): ids below num_motifs are cue tokens");
  MT_CHECK(c.audio_vocab >= 1, "synthetic data: audio_vocab must be >= 1, got ", c.audio_vocab);
  MT_CHECK(c.repeat_prob >= 0.0 && c.repeat_prob <= 1.0, "synthetic data: repeat_prob must be in [0, 1], got ",
           c.repeat_prob);
  // A recall needs two occurrences: 2 * (cue + motif) frames plus the gap between them.
  MT_CHECK(c.frames >= 2 * (c.motif_len + 1) + c.min_gap, "synthetic data: frames (", c.frames,
           ") too short for a motif to recur: need at least 2 * (motif_len + 1) + min_gap = ",
           2 * (c.motif_len + 1) + c.min_gap);
}

namespace {

// One random frame of noise: text avoids the cue ids so that cues are unambiguous.
void noise_frame(SplitMix64& rng, const SyntheticConfig& c, int64_t* col, int64_t stride) {
  col[0] = c.num_motifs + static_cast<int64_t>(rng.below(c.text_vocab - c.num_motifs));
  for (int64_t k = 1; k < c.streams; ++k) col[k * stride] = static_cast<int64_t>(rng.below(c.audio_vocab));
}

// One file of each pattern, [K, T] int64, from the file's own generator.
at::Tensor lexicon_file(const SyntheticConfig& c, SplitMix64& rng) {
  const int64_t K = c.streams, T = c.frames, V = c.text_vocab;
  std::vector<int64_t> pi(V);
  for (int64_t a = 0; a < V; ++a) pi[a] = a;
  for (int64_t a = V - 1; a > 0; --a) std::swap(pi[a], pi[rng.below(a + 1)]);  // Fisher-Yates
  at::Tensor codes = at::empty({K, T}, at::kLong);
  int64_t* cp = codes.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    const bool follow = t > 0 && rng.uniform() < c.follow_prob;
    cp[t] = follow ? pi[cp[t - 1]] : static_cast<int64_t>(rng.below(V));
    // Codebook 1 carries the previous frame's text, so that every frame shows one whole transition
    // (a -> pi(a)); the other codebooks hold a constant "silence" code.
    if (K > 1) cp[T + t] = t > 0 ? cp[t - 1] % c.audio_vocab : 0;
    for (int64_t k = 2; k < K; ++k) cp[k * T + t] = 0;
  }
  return codes;
}

at::Tensor repeat_file(const SyntheticConfig& c, SplitMix64& rng) {
  const int64_t K = c.streams, T = c.frames, H = T / 2;
  at::Tensor codes = at::empty({K, T}, at::kLong);
  int64_t* cp = codes.data_ptr<int64_t>();
  for (int64_t t = 0; t < H; ++t)
    for (int64_t k = 0; k < K; ++k) {
      cp[k * T + t] = static_cast<int64_t>(rng.below(k == 0 ? c.text_vocab : c.audio_vocab));
      cp[k * T + t + H] = cp[k * T + t];
    }
  return codes;
}

at::Tensor motif_file(const SyntheticConfig& c, SplitMix64& rng) {
  const int64_t K = c.streams, T = c.frames, L = c.motif_len, M = c.num_motifs;
  // Motifs of this file: [M][K, L], drawn like noise frames.
  at::Tensor motifs = at::empty({M, K, L}, at::kLong);
  int64_t* mp = motifs.data_ptr<int64_t>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t t = 0; t < L; ++t) noise_frame(rng, c, mp + m * K * L + t, L);

  at::Tensor codes = at::empty({K, T}, at::kLong);
  int64_t* cp = codes.data_ptr<int64_t>();
  std::vector<int64_t> last_end(M, -1);  // last motif frame of the previous occurrence; -1: none yet
  std::vector<int64_t> eligible;
  for (int64_t t = 0; t < T;) {
    bool start = t + 1 + L <= T && rng.uniform() < c.repeat_prob;
    if (start) {
      eligible.clear();
      for (int64_t m = 0; m < M; ++m)
        if (last_end[m] < 0 || t - last_end[m] - 1 >= c.min_gap) eligible.push_back(m);
      start = !eligible.empty();
    }
    if (!start) {
      noise_frame(rng, c, cp + t, T);
      ++t;
      continue;
    }
    const int64_t m = eligible[rng.below(eligible.size())];
    noise_frame(rng, c, cp + t, T);  // the cue frame: audio is noise, text names the motif
    cp[t] = m;
    for (int64_t j = 0; j < L; ++j)
      for (int64_t k = 0; k < K; ++k) cp[k * T + t + 1 + j] = mp[m * K * L + k * L + j];
    last_end[m] = t + L;
    t += L + 1;
  }
  return codes;
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> make_synthetic_files(const SyntheticConfig& c,
                                                                     std::vector<at::Tensor>* recall_masks) {
  check_synthetic_config(c);
  if (recall_masks) recall_masks->clear();
  std::vector<std::pair<std::string, at::Tensor>> files;
  for (int64_t i = 0; i < c.num_files; ++i) {
    SplitMix64 rng(c.seed, static_cast<uint64_t>(i));
    at::Tensor codes = c.pattern == "lexicon"  ? lexicon_file(c, rng)
                       : c.pattern == "repeat" ? repeat_file(c, rng)
                                               : motif_file(c, rng);
    char id[32];
    std::snprintf(id, sizeof id, "syn-%05lld", static_cast<long long>(i));
    files.emplace_back(id, codes);
    if (recall_masks) recall_masks->push_back(recall_mask(codes, c));  // one definition of recall frames
  }
  return files;
}

at::Tensor recall_mask(const at::Tensor& codes, const SyntheticConfig& c) {
  MT_CHECK(codes.defined() && codes.dim() == 2 && codes.size(0) >= 1, "recall_mask: codes must be [K, T], got ",
           codes.defined() ? shape_str(codes.sizes().vec()) : std::string("an undefined tensor"));
  at::Tensor text = codes[0].to(at::kCPU, at::kLong).contiguous();
  if (c.pattern == "repeat") {
    const int64_t T = text.size(0);
    at::Tensor mask = at::zeros({T}, at::kBool);
    mask.narrow(0, T / 2, T - T / 2).fill_(true);
    return mask;
  }
  if (c.pattern == "lexicon") {
    const int64_t T = text.size(0);
    const int64_t* tp = text.data_ptr<int64_t>();
    at::Tensor mask = at::zeros({T}, at::kBool);
    bool* rp = mask.data_ptr<bool>();
    std::unordered_map<int64_t, int64_t> last;  // predecessor id -> the last frame it preceded
    for (int64_t t = 1; t < T; ++t) {
      const int64_t a = tp[t - 1];
      auto it = last.find(a);
      rp[t] = it != last.end() && t - it->second > c.min_gap;
      last[a] = t;
    }
    return mask;
  }
  MT_CHECK(c.num_motifs >= 1 && c.motif_len >= 1, "recall_mask: num_motifs and motif_len must be >= 1");
  const int64_t T = text.size(0), L = c.motif_len;
  const int64_t* tp = text.data_ptr<int64_t>();
  at::Tensor mask = at::zeros({T}, at::kBool);
  bool* rp = mask.data_ptr<bool>();
  std::vector<bool> seen(c.num_motifs, false);
  for (int64_t t = 0; t < T;) {
    const int64_t m = tp[t];
    if (m < 0 || m >= c.num_motifs) {  // not a cue (noise, or -1 padding)
      ++t;
      continue;
    }
    if (seen[m])
      for (int64_t j = t + 1; j <= t + L && j < T; ++j) rp[j] = true;
    seen[m] = true;
    t += L + 1;
  }
  return mask;
}

}  // namespace mt::train
