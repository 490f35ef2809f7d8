#include "eval/paired.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include "audio/audio_io.h"
#include "eval/position_loss.h"
#include "io/safetensors.h"
#include "mimi/mimi.h"
#include "util/error.h"
#include "util/hash.h"

namespace fs = std::filesystem;

namespace mt::eval {

struct CodesCache::Impl {
  mimi::Mimi codec;
};

CodesCache::CodesCache(CodecSpec spec) : spec_(std::move(spec)) {
  MT_CHECK(!spec_.weights.empty(), "scoring audio needs the codec: --mimi WEIGHTS.safetensors");
  MT_CHECK(fs::exists(spec_.weights), spec_.weights, ": Mimi weights not found");
  MT_CHECK(spec_.config.empty() || fs::exists(spec_.config), spec_.config, ": Mimi config not found");
  MT_CHECK(spec_.num_codebooks >= 1, "codes cache: num_codebooks must be >= 1");
  if (!spec_.cache_dir.empty()) {
    uint64_t key = hash::fnv_u64(hash::kFnvOffset, hash::file_hash(spec_.weights));
    key = hash::fnv_str(key, spec_.config.empty() ? "released" : hash::hex(hash::file_hash(spec_.config)));
    key = hash::fnv_str(key, str("eval-mono/", spec_.num_codebooks));
    dir_ = (fs::path(spec_.cache_dir) / hash::hex(key)).string();
    fs::create_directories(dir_);
  }
}

CodesCache::~CodesCache() { delete impl_; }

at::Tensor CodesCache::codes(const std::string& path) {
  MT_CHECK(fs::exists(path), path, ": audio file not found");
  std::string shard;
  if (!dir_.empty()) {
    shard = (fs::path(dir_) / (hash::hex(hash::file_hash(path)) + ".safetensors")).string();
    if (fs::exists(shard)) {
      try {
        at::Tensor c = io::load_all(shard).at("codes");
        if (c.dim() == 2 && c.size(0) == spec_.num_codebooks && c.scalar_type() == at::kLong) {
          ++cached_;
          return c;
        }
      } catch (const std::exception&) {
        // A damaged cache entry is encoded again (and replaced atomically).
      }
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  if (!impl_) {
    mimi::Mimi m = mimi::load_mimi(spec_.weights, spec_.config);
    MT_CHECK(spec_.num_codebooks <= m->cfg.quantizer.n_q, spec_.weights, ": the LM needs ", spec_.num_codebooks,
             " codebooks per clip, the codec has ", m->cfg.quantizer.n_q);
    m->cfg.num_codebooks = spec_.num_codebooks;
    m->to(at::Device(spec_.device));
    m->quantizer->refresh();
    impl_ = new Impl{m};
  }
  audio::Audio a = audio::read_audio_24k(path);
  MT_CHECK(a.frames() > 0, path, ": no audio samples");
  at::Tensor wav = a.samples.mean(0, /*keepdim=*/true).unsqueeze(0);  // [1, 1, N]
  at::Tensor c;
  {
    at::InferenceMode im;
    c = impl_->codec->encode(wav.to(at::Device(spec_.device)))[0].cpu().contiguous();  // [K, F]
  }
  c = c.clone();  // out of inference mode, so it can be saved and reused freely
  if (!shard.empty())
    io::save(shard, std::vector<std::pair<std::string, at::Tensor>>{{"codes", c}}, {{"source", path}});
  ++encoded_;
  audio_seconds_ += a.duration_sec();
  encode_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return c;
}

int64_t clip_codebooks(const lm::LMConfig& cfg, const std::string& placement) {
  MT_CHECK(cfg.dep_q >= 1, "scoring audio needs an LM with a depformer (dep_q >= 1)");
  if (placement == "moshi") return cfg.dep_q < cfg.n_q ? std::min(cfg.dep_q, cfg.n_q - cfg.dep_q) : cfg.n_q / 2;
  if (placement == "user") {
    MT_CHECK(cfg.dep_q == cfg.n_q, "--placement user: this LM's depformer predicts only Moshi's stream (dep_q ",
             cfg.dep_q, " < n_q ", cfg.n_q, "), so a clip in the user stream cannot be scored; use --placement moshi");
    return cfg.n_q / 2;
  }
  fail("--placement must be moshi or user, got '", placement, "'");
}

namespace {

// First stream (in codes) and first depformer codebook of the clip.
int64_t clip_offset(const lm::LMConfig& cfg, const std::string& placement) {
  return placement == "user" ? cfg.n_q / 2 : 0;
}

}  // namespace

at::Tensor place_clip(const lm::LMConfig& cfg, const at::Tensor& clip, const ScoringOptions& o) {
  const int64_t A = clip_codebooks(cfg, o.placement);
  MT_CHECK(clip.dim() == 2 && clip.size(0) == A, "clip codes: expected [", A, ", F], got ",
           shape_str(clip.sizes().vec()));
  MT_CHECK(o.text == "pad" || o.text == "none", "--text must be pad or none, got '", o.text, "'");
  const int64_t F = clip.size(1);
  at::Tensor codes = at::full({cfg.num_codebooks(), F}, lm::LMConfig::kZeroToken, at::kLong);
  if (o.text == "pad") {
    MT_CHECK(cfg.existing_text_padding_id.has_value(), "--text pad: this LM has no text padding id; use --text none");
    codes[0].fill_(*cfg.existing_text_padding_id);
  }
  codes.narrow(0, cfg.audio_offset() + clip_offset(cfg, o.placement), A).copy_(clip);
  return codes;
}

std::vector<ClipScore> score_clips(const lm::LMModelImpl& m, const std::vector<at::Tensor>& clips,
                                   const ScoringOptions& o) {
  const lm::LMConfig& cfg = m.cfg;
  const int64_t A = clip_codebooks(cfg, o.placement);
  const int64_t cb0 = clip_offset(cfg, o.placement);
  MT_CHECK(o.batch >= 1, "--batch must be >= 1");
  std::vector<ClipScore> out(clips.size());
  // Similar lengths together (less padding); results go back in the input order.
  std::vector<size_t> order(clips.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return clips[a].size(1) < clips[b].size(1); });
  const at::Device dev = m.text_linear->weight.device();
  const auto t0 = std::chrono::steady_clock::now();
  int64_t done = 0, last_print = 0;
  for (size_t s = 0; s < order.size(); s += static_cast<size_t>(o.batch)) {
    const size_t e = std::min(order.size(), s + static_cast<size_t>(o.batch));
    int64_t T = 0;
    for (size_t i = s; i < e; ++i) T = std::max(T, clips[order[i]].size(1));
    MT_CHECK(T >= 1, "a clip has no frames");
    at::Tensor codes =
        at::full({static_cast<int64_t>(e - s), cfg.num_codebooks(), T}, lm::LMConfig::kZeroToken, at::kLong);
    for (size_t i = s; i < e; ++i) {
      const at::Tensor& c = clips[order[i]];
      codes[static_cast<int64_t>(i - s)].narrow(1, 0, c.size(1)).copy_(place_clip(cfg, c, o));
    }
    codes = codes.to(dev);
    at::Tensor ce;
    at::Tensor mask;
    {
      at::InferenceMode im;
      lm::LMOutput r = m.forward(codes);
      ce = masked_cross_entropy(r.logits.narrow(1, cb0, A), codes.narrow(1, cfg.audio_offset() + cb0, A),
                                r.mask.narrow(1, cb0, A))
               .to(at::kDouble)
               .cpu();
      mask = r.mask.narrow(1, cb0, A).cpu();
    }
    for (size_t i = s; i < e; ++i) {
      const int64_t b = static_cast<int64_t>(i - s), L = clips[order[i]].size(1);
      // Positions the unpadded pass scores: the last `delay` steps of a delayed codebook are never
      // predicted from real input (the padded pass would predict them from padding).
      at::Tensor mk = mask[b].clone();
      for (int64_t k = 0; k < A; ++k) {
        const int64_t d = cfg.delays.at(static_cast<size_t>(cfg.audio_offset() + cb0 + k));
        const int64_t valid = std::max<int64_t>(0, L - d);
        if (valid < T) mk[k].narrow(0, valid, T - valid).fill_(false);
      }
      at::Tensor c = at::where(mk, ce[b], at::zeros({}, ce.options()));
      const double n = mk.sum().item<double>();
      const double total = c.sum().item<double>();
      const double n0 = mk[0].sum().item<double>();
      const double sem = c[0].sum().item<double>();
      ClipScore& r = out[order[i]];
      r.frames = L;
      r.tokens = static_cast<int64_t>(n);
      const double w_total = 100.0 * sem + (total - sem), w_n = 100.0 * n0 + (n - n0);
      r.score = {n > 0 ? -total / n : NAN, n > 0 ? -total : NAN, n0 > 0 ? -sem / n0 : NAN,
                 w_n > 0 ? -w_total / w_n : NAN};
    }
    done += static_cast<int64_t>(e - s);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!o.quiet && (secs - static_cast<double>(last_print) >= 5.0 || e == order.size())) {
      last_print = static_cast<int64_t>(secs);
      const double rate = static_cast<double>(done) / std::max(secs, 1e-9);
      std::fprintf(stderr, "[score] %lld/%zu clips, %.1f clips/s, ETA %.0f s\n", (long long)done, clips.size(), rate,
                   static_cast<double>(static_cast<int64_t>(clips.size()) - done) / std::max(rate, 1e-9));
    }
  }
  return out;
}

}  // namespace mt::eval
