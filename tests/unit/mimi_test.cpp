// Mimi: causal convs, streaming = whole signal, strict loading, the released config's tensor table.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "mimi/mimi.h"
#include "reference/mimi_case.h"
#include "test_util.h"
#include "util/error.h"

using namespace mt;
using namespace mt::mimi;

namespace {

MimiConfig small_config() { return MimiConfig::from_file(test::reference_dir() + "/mimi/mimi_small/config.json"); }

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(MimiConv, Conv1dStepsEqualForwardForBothPadModes) {
  at::manual_seed(0);
  for (const char* pad : {"constant", "replicate"}) {
    StreamingConv1d c(3, 5, 8, 2, 1, 1, true, pad);
    for (auto& p : c->parameters()) p.data().normal_();
    at::Tensor x = at::randn({2, 3, 24});
    at::Tensor whole = c->forward(x);
    ASSERT_EQ(whole.size(2), 12);
    Conv1dState st;
    std::vector<at::Tensor> parts;
    for (int64_t s : {0, 2, 8, 10}) parts.push_back(c->step(x.narrow(2, s, s == 2 ? 6 : (s == 10 ? 14 : 2)), st));
    EXPECT_LT(max_diff(at::cat(parts, 2), whole), 1e-5) << pad;
  }
  // Replicate padding differs from zeros exactly at the start.
  StreamingConv1d a(1, 1, 4, 2, 1, 1, false, "constant"), b(1, 1, 4, 2, 1, 1, false, "replicate");
  a->parameters()[0].data().fill_(1.0);
  b->parameters()[0].data().fill_(1.0);
  at::Tensor x = at::ones({1, 1, 4});
  EXPECT_NEAR(a->forward(x)[0][0][0].item<double>(), 2.0, 1e-6);  // two zeros + two ones
  EXPECT_NEAR(b->forward(x)[0][0][0].item<double>(), 4.0, 1e-6);  // copies of the first sample
  EXPECT_NE(error_of([&] { a->forward(at::ones({1, 1, 3})); }).find("multiple of the stride"), std::string::npos);
}

TEST(MimiConv, ConvTransposeStepsEqualForwardWithBiasCountedOnce) {
  at::manual_seed(1);
  for (int64_t groups : {1, 4}) {
    StreamingConvTranspose1d c(4, 4, 6, 3, groups, groups == 1);
    for (auto& p : c->parameters()) p.data().normal_();
    at::Tensor x = at::randn({2, 4, 7});
    at::Tensor whole = c->forward(x);
    ASSERT_EQ(whole.size(2), 21);
    ConvTr1dState st;
    std::vector<at::Tensor> parts;
    for (int64_t s = 0; s < 7; ++s) parts.push_back(c->step(x.narrow(2, s, 1), st));
    EXPECT_LT(max_diff(at::cat(parts, 2), whole), 1e-5) << "groups " << groups;
  }
}

TEST(Mimi, StreamingEqualsWholeSignalEncodeAndDecode) {
  Mimi m(small_config());
  m->init_random(3);
  at::InferenceMode im;
  at::manual_seed(2);
  const int64_t fs = m->cfg.frame_size(), F = 7;
  at::Tensor wav = at::randn({2, 1, F * fs}) * 0.3;
  at::Tensor lat = m->encode_latent(wav);
  ASSERT_EQ(lat.sizes(), (std::vector<int64_t>{2, 32, F}));
  for (int64_t per : {1, 2}) {  // one frame per call, then chunks of up to two frames
    MimiState st = m->make_state(2, per, /*exact=*/true);
    std::vector<at::Tensor> parts;
    for (int64_t s = 0; s < F; s += per) {
      const int64_t n = std::min(per, F - s);
      parts.push_back(m->encode_latent_step(wav.narrow(2, s * fs, n * fs), st));
    }
    at::Tensor ls = at::cat(parts, 2);
    EXPECT_LT(max_diff(ls, lat), 1e-4 * (1 + lat.abs().max().item<double>())) << per << " frame(s) per call";
    // Codes: equal except at near-ties.
    at::Tensor cw = m->quantizer->encode(lat, m->cfg.num_codebooks);
    at::Tensor cs = m->quantizer->encode(ls, m->cfg.num_codebooks);
    CodeCheck cc = check_codes(m, ls, cs, cw, 1e-4);
    EXPECT_EQ(cc.clear_mismatches, 0);
    EXPECT_GE(cc.matches, cc.total * 9 / 10);
  }
  at::Tensor codes = m->encode(wav);
  ASSERT_EQ(codes.sizes(), (std::vector<int64_t>{2, 8, F}));
  EXPECT_GT(std::get<0>(at::_unique(codes.select(1, 0))).numel(), 1) << "codes should vary along time";
  at::Tensor dec = m->decode(codes);
  ASSERT_EQ(dec.sizes(), (std::vector<int64_t>{2, 1, F * fs}));
  MimiState st = m->make_state(2, 1, /*exact=*/true);
  std::vector<at::Tensor> parts;
  for (int64_t t = 0; t < F; ++t) parts.push_back(m->decode_step(codes.narrow(2, t, 1), st));
  EXPECT_LT(max_diff(at::cat(parts, 2), dec), 1e-4 * (1 + dec.abs().max().item<double>()));
  // reset() starts the stream over: the first frame again gives the first output again.
  st.reset();
  EXPECT_LT(max_diff(m->decode_step(codes.narrow(2, 0, 1), st), parts[0]), 1e-6);
}

TEST(Mimi, EncodePadsToWholeFramesAndStepRejectsPartialFrames) {
  Mimi m(small_config());
  m->init_random(4);
  at::InferenceMode im;
  at::Tensor wav = at::randn({1, 1, 1920 * 2 + 100});
  EXPECT_EQ(m->encode(wav).size(2), 3);
  MimiState st = m->make_state(1);
  EXPECT_NE(error_of([&] {
              m->encode_step(at::zeros({1, 1, 1000}), st);
            }).find("whole number of 1920-sample frames"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              m->decode(at::full({1, 8, 2}, 64, at::kLong));
            }).find("codes outside [0, 64)"),
            std::string::npos);
}

TEST(Mimi, LoaderIsStrictAndNamesTheTensor) {
  const std::string dir = test::reference_dir() + "/mimi/mimi_small";
  auto tensors = io::load_all(dir + "/model.safetensors");
  Mimi m(small_config());
  EXPECT_NO_THROW(m->load(tensors, "model.safetensors"));
  {
    auto t = tensors;
    t.erase("decoder.model.14.conv.conv.bias");
    EXPECT_NE(error_of([&] {
                m->load(t, "x.safetensors");
              }).find("x.safetensors: missing tensor 'decoder.model.14.conv.conv.bias'"),
              std::string::npos);
  }
  {
    auto t = tensors;
    t["downsample.conv.conv.conv.weight"] = at::zeros({32, 32, 3});
    std::string e = error_of([&] { m->load(t, "x"); });
    EXPECT_NE(e.find("'downsample.conv.conv.conv.weight': expected shape [32, 32, 4], got [32, 32, 3]"),
              std::string::npos)
        << e;
  }
  {
    auto t = tensors;
    t["quantizer.rvq_rest.vq.layers.7._codebook.embedding_sum"] = at::zeros({64, 16});
    EXPECT_NE(error_of([&] { m->load(t, "x"); }).find("unexpected tensor"), std::string::npos);
  }
  {  // older names load into the same tensors
    auto t = tensors;
    const std::string p = "encoder_transformer.transformer.layers.0.self_attn.";
    t[p + "in_proj_weight"] = t.at(p + "in_projs.0.weight");
    t.erase(p + "in_projs.0.weight");
    t["quantizer.rvq_first.vq.layers.0._codebook.embed_sum"] =
        t.at("quantizer.rvq_first.vq.layers.0._codebook.embedding_sum");
    t.erase("quantizer.rvq_first.vq.layers.0._codebook.embedding_sum");
    Mimi m2(small_config());
    EXPECT_NO_THROW(m2->load(t, "old"));
    at::InferenceMode im;
    at::Tensor wav = at::randn({1, 1, 1920});
    EXPECT_TRUE(m2->encode(wav).equal(m->encode(wav)));
  }
}

TEST(Mimi, ConfigRejectsUnknownKeysAndTheReleasedTableMatchesTheSpec) {
  nlohmann::json j = small_config().to_json();
  j["seanet"]["n_filter"] = 4;
  EXPECT_NE(error_of([&] { MimiConfig::from_json(j, "cfg.json"); }).find("cfg.json.seanet: unknown key 'n_filter'"),
            std::string::npos);
  // Round trip.
  MimiConfig back = MimiConfig::from_json(small_config().to_json());
  EXPECT_EQ(back.to_json(), small_config().to_json());
  // shared/spec/moshi.md 2.8: the released checkpoint holds 318 tensors, 96,151,393 elements.
  Mimi r(MimiConfig::released());
  int64_t n = 0, elems = 0;
  for (const auto& kv : r->named_parameters()) ++n, elems += kv.value().numel();
  for (const auto& kv : r->named_buffers()) ++n, elems += kv.value().numel();
  EXPECT_EQ(n, 318);
  EXPECT_EQ(elems, 96151393);
  EXPECT_EQ(r->cfg.frame_size(), 1920);
  EXPECT_EQ(r->cfg.resample_stride(), 2);
}

// A server restarts one conversation's slot while the others stream on: the restarted slot must then
// equal a fresh stream (replicate padding re-applied to its next first sample, transposed-conv tails
// and KV rings cleared) and the other slot must not notice.
TEST(Mimi, SlotResetRestartsThatSlotAloneInEncodeAndDecode) {
  Mimi m(small_config());
  m->init_random(5);
  at::InferenceMode im;
  at::manual_seed(4);
  const int64_t fs = m->cfg.frame_size(), F = 6, cut = 3;
  at::Tensor wav = at::randn({2, 1, F * fs}) * 0.3;
  at::Tensor codes = at::randint(0, m->cfg.quantizer.bins, {2, m->cfg.num_codebooks, F}, at::kLong);
  auto run = [&](const at::Tensor& w, const at::Tensor& c, int64_t reset_at) {
    MimiState st = m->make_state(w.size(0));
    std::vector<at::Tensor> enc, dec;
    for (int64_t t = 0; t < c.size(2); ++t) {
      if (t == reset_at) st.reset_slot(0);
      enc.push_back(m->encode_step(w.narrow(2, t * fs, fs), st));
      dec.push_back(m->decode_step(c.narrow(2, t, 1), st));
    }
    return std::pair{at::cat(enc, 2), at::cat(dec, 2)};
  };
  auto [enc, dec] = run(wav, codes, cut);
  auto [enc_alone, dec_alone] = run(wav, codes, -1);
  // Slot 1 went on undisturbed, bit for bit.
  EXPECT_TRUE(at::equal(enc[1], enc_alone[1]));
  EXPECT_TRUE(at::equal(dec[1], dec_alone[1]));
  // Slot 0 after its reset equals a fresh batch-1 stream of the rest of its input.
  auto [enc_fresh, dec_fresh] =
      run(wav.narrow(0, 0, 1).narrow(2, cut * fs, (F - cut) * fs), codes.narrow(0, 0, 1).narrow(2, cut, F - cut), -1);
  EXPECT_TRUE(at::equal(enc[0].narrow(1, cut, F - cut), enc_fresh[0]));
  EXPECT_LT(max_diff(dec[0].narrow(1, cut * fs, (F - cut) * fs), dec_fresh[0]), 1e-5);
  // And it differs from not resetting (the test can fail).
  EXPECT_GT(max_diff(dec[0], dec_alone[0]), 1e-3);
}
