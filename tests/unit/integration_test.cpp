// The three TTT integrations in the Moshi temporal transformer (hybrid, adapter, In-Place) and LoRA:
// streaming (chunks 1/7/16) equals the whole-sequence forward across a reset, no logit depends on the
// token it predicts or a later one, per-slot resets, a base checkpoint loads with the new tensors
// initialised, the state after streaming equals the state after a whole pass, every new parameter
// gets a gradient, and adapter / LoRA parameter counts.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include "io/safetensors.h"
#include "lm/lm_model.h"
#include "test_util.h"
#include "util/error.h"

using namespace mt;
using namespace mt::lm;

namespace {
LMConfig base_cfg() {
  LMConfig c = LMConfig::tiny();
  c.dim = 32;
  c.num_heads = 2;
  c.num_layers = 3;
  c.context = 40;
  return c;
}

struct Variant {
  std::string name, ttt_yaml, lora_yaml;
};

const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = {
      {"hybrid_linear", "variant: hybrid\ntype: linear\nmini_batch_size: 4\nattention_context: 5", ""},
      {"hybrid_mlp", "variant: hybrid\ntype: mlp\nmini_batch_size: 3", ""},
      {"hybrid_parallel", "variant: hybrid\ntype: linear\nmini_batch_size: 4\nplacement: parallel", ""},
      {"hybrid_before_attention", "variant: hybrid\ntype: mlp\nmini_batch_size: 3\nplacement: before_attention", ""},
      {"adapter",
       "variant: adapter\nadapter_rank: 4\nmini_batch_size: 4\nadapter_targets: [self_attn.in_proj, "
       "self_attn.out_proj, gating.linear_out]",
       ""},
      {"adapter_lora", "variant: adapter\nadapter_rank: 4\nmini_batch_size: 2",
       "enable: true\nrank: 3\ntargets: [layers.0., depformer]"},
      {"inplace_embeddings", "variant: inplace\ninplace_chunk_size: 4\ninplace_lr: 0.5\ninplace_lookahead: 2", ""},
      {"inplace_ffn_input",
       "variant: inplace\ninplace_chunk_size: 5\ninplace_lr: 0.5\ninplace_conv_kernel: 3\ninplace_lookahead: "
       "1\ninplace_target: ffn_input",
       ""},
      {"lora_only", "", "enable: true\nrank: 2\nscaling: 2.0"},
  };
  return v;
}

TTTIntegrationConfig ttt_of(const Variant& v) {
  if (v.ttt_yaml.empty()) return {};
  return TTTIntegrationConfig::from_yaml(YAML::Load("enable: true\nlayers: \"1,2\"\n" + v.ttt_yaml));
}
LoRAConfig lora_of(const Variant& v) {
  return v.lora_yaml.empty() ? LoRAConfig{} : LoRAConfig::from_yaml(YAML::Load(v.lora_yaml));
}

// A model whose new tensors are far from their no-op initial values, so every TTT path matters.
LMModel make(const Variant& v, uint64_t seed = 3) {
  LMModel m(base_cfg(), ttt_of(v), lora_of(v));
  m->init_weights(seed);
  at::NoGradGuard ng;
  at::Generator g = at::detail::createCPUGenerator(seed + 100);
  for (auto& kv : m->named_parameters()) {
    const std::string& n = kv.key();
    if (n.find("gating_alpha") != std::string::npos) kv.value().fill_(0.7);
    if (n.find("ttt_adapter.up.") != std::string::npos || n.find("lora_B.") != std::string::npos ||
        n.find("ttt_conv.") != std::string::npos)
      kv.value().copy_(at::randn(kv.value().sizes(), g) * 0.3);
  }
  return m;
}

at::Tensor random_codes(const LMModel& m, int64_t B, int64_t T, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::randint(std::min(m->cfg.card, m->cfg.text_card), {B, m->cfg.num_codebooks(), T}, g, at::kLong);
}

double masked_diff(const at::Tensor& a, const at::Tensor& b, const at::Tensor& mask) {
  at::Tensor m = mask.unsqueeze(-1).expand_as(a);
  return (a.masked_select(m) - b.masked_select(m)).abs().max().item<double>();
}
}  // namespace

class Integration : public ::testing::TestWithParam<size_t> {
 protected:
  const Variant& v() const { return variants()[GetParam()]; }
};

TEST_P(Integration, StreamingEqualsForwardForChunks1_7_16AcrossAReset) {
  LMModel m = make(v());
  at::InferenceMode im;
  const int64_t B = 2, T = 23;
  at::Tensor codes = random_codes(m, B, T, 7);
  LMOutput whole = m->forward(codes);
  // The TTT / LoRA tensors change the outputs (the test is not vacuous).
  LMModel plain(base_cfg());
  {
    std::map<std::string, at::Tensor> base;
    for (auto& kv : m->state_dict())
      if (!is_ttt_param(kv.first) && !is_lora_param(kv.first)) base[kv.first] = kv.second;
    plain->load(base, "test");
  }
  EXPECT_GT(masked_diff(plain->forward(codes).text_logits, whole.text_logits, whole.text_mask), 1e-3) << v().name;
  for (int64_t chunk : {1, 7, 16}) {
    TransformerState st = m->make_state(B, chunk);
    m->forward_streaming(random_codes(m, B, 9, 11), st);  // another conversation first
    st.reset();
    LMOutput s = m->forward_streaming(codes, st);
    EXPECT_LT(masked_diff(s.text_logits, whole.text_logits, whole.text_mask), 5e-5) << v().name << " chunk " << chunk;
    EXPECT_LT(masked_diff(s.logits, whole.logits, whole.mask), 5e-5) << v().name << " chunk " << chunk;
  }
}

// Moshi generates token (k, s) of stream k at step s at frame s + delay_k, text first, then the audio
// codebooks in order. Changing one token must leave every logit generated before it, and its own
// logit, unchanged: frames before, and at the same frame the streams up to k.
TEST_P(Integration, NoLogitDependsOnItsTokenOrALaterOne) {
  LMModel m = make(v());
  at::InferenceMode im;
  const int64_t T = 21, K = m->cfg.num_codebooks(), Kp = 1 + m->cfg.dep_q;
  at::Tensor codes = random_codes(m, 1, T, 5);
  LMOutput ref = m->forward(codes);
  auto logits_of = [](const LMOutput& o, int64_t j) {
    return (j == 0 ? o.text_logits.select(1, 0) : o.logits.select(1, j - 1)).select(0, 0).nan_to_num(0);  // [T, card]
  };
  int64_t checked = 0, later_moved = 0;
  for (int64_t t : {0, 4, 9, 10, 15, 19}) {
    for (int64_t k = 0; k < K; ++k) {
      at::Tensor c2 = codes.clone();
      c2.select(1, k).select(1, t).add_(1).remainder_(m->cfg.card);
      LMOutput o = m->forward(c2);
      const int64_t frame = t + m->cfg.delays[k];
      for (int64_t j = 0; j < Kp; ++j) {
        for (int64_t s2 = 0; s2 < T; ++s2) {
          const int64_t f2 = s2 + m->cfg.delays[j];
          if (!(f2 < frame || (f2 == frame && j <= k))) {
            later_moved += test::max_abs_diff(logits_of(o, j)[s2], logits_of(ref, j)[s2]) > 0;
            continue;
          }
          ++checked;
          const double d = test::max_abs_diff(logits_of(o, j)[s2], logits_of(ref, j)[s2]);
          EXPECT_EQ(d, 0) << v().name << ": logit of stream " << j << " at step " << s2 << " (frame " << f2
                          << ") moved when stream " << k << " changed at step " << t << " (frame " << frame << ")";
        }
      }
    }
  }
  EXPECT_GT(checked, 900);
  EXPECT_GT(later_moved, 300) << "changing a token moved no later logit: the test would not see a leak";
}

TEST_P(Integration, SlotsResetIndependently) {
  LMModel m = make(v());
  at::InferenceMode im;
  const int64_t T = 13, pre = 6;
  // The temporal transformer's inputs: an initial column, then codes delayed per stream.
  at::Tensor init = m->initial_tokens();
  auto delayed = [&](const at::Tensor& c) {
    std::vector<at::Tensor> rows;
    for (int64_t k = 0; k < c.size(1); ++k) {
      const int64_t dl = m->cfg.delays[k];
      at::Tensor r = c.select(1, k);
      if (dl > 0) r = at::cat({init.select(1, k).expand({1, dl}), r.narrow(1, 0, r.size(1) - dl)}, 1);
      rows.push_back(r);
    }
    return at::cat({init, at::stack(rows, 1)}, 2);
  };
  at::Tensor sa = delayed(random_codes(m, 1, T, 21)), sb = delayed(random_codes(m, 1, T + pre, 22));
  at::Tensor other = delayed(random_codes(m, 1, pre, 23));
  // Slot 0 hears another file for `pre` steps, is reset, then hears a; slot 1 hears b throughout.
  TransformerState st = m->make_state(2, 1);
  for (int64_t t = 0; t < pre; ++t) m->forward_text(at::cat({other.narrow(2, t, 1), sb.narrow(2, t, 1)}, 0), &st);
  st.reset(at::tensor({1, 0}).to(at::kBool));
  std::vector<at::Tensor> outs0, outs1;
  for (int64_t t = 0; t < T; ++t) {
    auto [o, tl] = m->forward_text(at::cat({sa.narrow(2, t, 1), sb.narrow(2, t + pre, 1)}, 0), &st);
    outs0.push_back(tl.select(0, 0));
    outs1.push_back(tl.select(0, 1));
  }
  auto [wa, tla] = m->forward_text(sa.narrow(2, 0, T));
  auto [wb, tlb] = m->forward_text(sb.narrow(2, 0, T + pre));
  EXPECT_LT(test::max_abs_diff(at::cat(outs0, 1), tla.select(0, 0)), 5e-5) << v().name << ": the reset slot";
  EXPECT_LT(test::max_abs_diff(at::cat(outs1, 1), tlb.select(0, 0).narrow(1, pre, T)), 5e-5)
      << v().name << ": the slot that went on";
}

TEST_P(Integration, StateAfterStreamingEqualsStateAfterAWholePass) {
  LMModel m = make(v());
  if (!m->transformer->has_addons()) GTEST_SKIP() << "no TTT state";
  at::InferenceMode im;
  const int64_t T = 17;
  at::Generator g = at::detail::createCPUGenerator(9);
  at::Tensor x = at::randn({2, T, m->cfg.dim}, g);
  std::vector<nn::LayerState> whole = m->transformer->make_layer_states(2);
  std::vector<LayerProbes> pw;
  const nn::ProbeFn fw = probe_collector(*m->transformer, pw);
  m->transformer->forward(x, &whole, &fw);
  TransformerState st = m->transformer->make_state(2, 1);
  std::vector<LayerProbes> ps;
  const nn::ProbeFn fs = probe_collector(*m->transformer, ps);
  for (int64_t t = 0; t < T; ++t) m->transformer->step(x.narrow(1, t, 1), st, &fs);
  for (size_t l = 1; l < 3; ++l) {
    const nn::LayerState &a = whole[l], &b = st.addons[l];
    if (const ttt::TTTState* ha = hybrid_state(a), *hb = hybrid_state(b); ha) {
      EXPECT_EQ(ha->position, hb->position);
      EXPECT_LT(test::max_abs_diff(ha->W[0], hb->W[0]), 5e-5);
      EXPECT_LT(test::max_abs_diff(pw[l].hybrid.w_delta_norm, ps[l].hybrid.w_delta_norm), 1e-4);
      EXPECT_GT(ps[l].hybrid.w_delta_norm.min().item<double>(), 0) << "state never moved";
    }
    const auto aa = adapter_states(a), ab = adapter_states(b);
    for (size_t j = 0; j < aa.size(); ++j) {
      EXPECT_LT(test::max_abs_diff(aa[j]->W[0], ab[j]->W[0]), 5e-5);
      EXPECT_GT(ps[l].adapters[j].w_delta_norm.min().item<double>(), 0) << "adapter state never moved";
    }
    if (const ttt::InPlaceState* ia = inplace_state(a), *ib = inplace_state(b); ia) {
      EXPECT_LT(test::max_abs_diff(ia->dw, ib->dw), 5e-5);
      EXPECT_EQ(ia->pos, ib->pos);
      EXPECT_GT(ps[l].inplace_dw_norm.min().item<double>(), 0) << "In-Place fast weight never updated while streaming";
      EXPECT_LT(test::max_abs_diff(pw[l].inplace_dw_norm, ps[l].inplace_dw_norm), 1e-4);
      EXPECT_EQ(ps[l].inplace_updates, T / inplace_of(*m->transformer->layer_ptrs[l])->inner().cfg.chunk_size);
    }
  }
}

TEST_P(Integration, BaseCheckpointLoadsWithNewTensorsInitialised) {
  test::TempDir d;
  LMModel base(base_cfg());
  base->init_weights(1);
  io::save(d.file("base.safetensors"), base->state_dict());
  int64_t initialised = 0;
  LMModel m = load_lm(base_cfg(), d.file("base.safetensors"), at::kFloat, ttt_of(v()), &initialised, lora_of(v()));
  int64_t added = 0;
  for (auto& kv : m->named_parameters()) {
    if (is_ttt_param(kv.key()) || is_lora_param(kv.key())) {
      ++added;
      continue;
    }
    EXPECT_TRUE(at::equal(kv.value(), base->named_parameters()[kv.key()])) << kv.key();
  }
  EXPECT_EQ(initialised, added);
  // New tensors start as a no-op except the hybrid gate (tanh(α) · TTT): adapters, LoRA and the
  // In-Place target leave a base model's outputs unchanged.
  if (v().name.rfind("hybrid", 0) != 0) {
    at::InferenceMode im;
    at::Tensor codes = random_codes(m, 1, 12, 4);
    EXPECT_LT(
        test::max_abs_diff(m->forward(codes).text_logits.nan_to_num(0), base->forward(codes).text_logits.nan_to_num(0)),
        1e-5);
  }
  // A file with some of the new tensors but not all is an error naming a missing one.
  auto sd = m->state_dict();
  std::string dropped;
  for (auto it = sd.begin(); it != sd.end(); ++it)
    if (is_ttt_param(it->first) || is_lora_param(it->first)) {
      dropped = it->first;
      sd.erase(it);
      break;
    }
  io::save(d.file("partial.safetensors"), sd);
  try {
    load_lm(base_cfg(), d.file("partial.safetensors"), at::kFloat, ttt_of(v()), nullptr, lora_of(v()));
    ADD_FAILURE() << "partial file loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dropped), std::string::npos) << e.what();
  }
}

TEST_P(Integration, EveryNewParameterGetsAGradient) {
  LMModel m = make(v());
  for (auto& p : m->parameters()) p.set_requires_grad(true);
  at::Tensor codes = random_codes(m, 2, 14, 8);
  LMOutput o = m->forward(codes);
  at::Tensor loss = o.text_logits.nan_to_num(0).pow(2).mean() + o.logits.nan_to_num(0).pow(2).mean();
  loss.backward();
  std::vector<std::string> missing;
  for (auto& kv : m->named_parameters()) {
    if (!is_ttt_param(kv.key()) && !is_lora_param(kv.key())) continue;
    const at::Tensor& gr = kv.value().grad();
    if (!gr.defined() || !gr.isfinite().all().item<bool>() || gr.abs().sum().item<double>() == 0)
      missing.push_back(kv.key());
  }
  EXPECT_TRUE(missing.empty()) << v().name << ": no gradient for " << missing.size() << " tensors, first "
                               << missing.front();
}

// Training over consecutive chunks of one file: the TTT state carries from chunk to chunk (outputs
// differ from a fresh start), detach() cuts the graph between chunks, and a slot reset at a file
// boundary gives that slot a fresh start while the other slot keeps its state.
TEST_P(Integration, StatesPersistAcrossTrainingChunks) {
  LMModel m = make(v());
  if (!m->transformer->has_addons()) GTEST_SKIP() << "no TTT state";
  for (auto& p : m->parameters()) p.set_requires_grad(true);
  at::Tensor a = random_codes(m, 2, 12, 31), b = random_codes(m, 2, 12, 32);
  std::vector<nn::LayerState> st = m->transformer->make_layer_states(2);
  // Chunk a is trained (its graph freed by the backward), then the state is detached: the backward of
  // chunk b must not reach into chunk a's graph (it would throw: "backward through the graph a second time").
  m->forward(a, nullptr, &st).text_logits.nan_to_num(0).pow(2).mean().backward();
  for (auto& s : st) s.detach();
  LMOutput carried = m->forward(b, nullptr, &st);
  EXPECT_NO_THROW(carried.text_logits.nan_to_num(0).pow(2).mean().backward()) << v().name;
  LMOutput fresh = m->forward(b);
  const at::Tensor mk = fresh.text_mask;
  EXPECT_GT(masked_diff(carried.text_logits.detach(), fresh.text_logits.detach(), mk), 1e-6)
      << v().name << ": state not carried";
  // A reset of slot 0 at a file boundary: slot 0 equals a fresh start, slot 1 still carries.
  std::vector<nn::LayerState> st2 = m->transformer->make_layer_states(2);
  {
    at::NoGradGuard ng;
    m->forward(a, nullptr, &st2);
    for (auto& s : st2) s.reset_slot(0);
    LMOutput o = m->forward(b, nullptr, &st2);
    at::Tensor m0 = mk.narrow(0, 0, 1), m1 = mk.narrow(0, 1, 1);
    EXPECT_LT(masked_diff(o.text_logits.narrow(0, 0, 1), fresh.text_logits.detach().narrow(0, 0, 1), m0), 5e-5);
    EXPECT_LT(masked_diff(o.text_logits.narrow(0, 1, 1), carried.text_logits.detach().narrow(0, 1, 1), m1), 5e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, Integration, ::testing::Range<size_t>(0, 9),
                         [](const auto& info) { return variants()[info.param].name; });

// The three placements of the hybrid block share their weights (same tensor names) but not their outputs;
// a mistyped placement is named.
TEST(Hybrid, PlacementsLoadTheSameWeightsAndDiffer) {
  auto cfg = [](const std::string& p) {
    return TTTIntegrationConfig::from_yaml(YAML::Load("enable: true\nlayers: \"1\"\nvariant: hybrid\nplacement: " + p));
  };
  LMModel a(base_cfg(), cfg("after_attention"));
  a->init_weights(3);
  {
    at::NoGradGuard ng;  // a strong gate, so that the TTT path shows in the logits
    for (auto& kv : a->named_parameters())
      if (kv.key().find("gating_alpha") != std::string::npos) kv.value().fill_(2.0);
  }
  at::Tensor codes = at::randint(0, 16, {1, base_cfg().num_codebooks(), 12}, at::kLong);
  at::NoGradGuard ng;
  at::Tensor ya = a->forward(codes).text_logits;
  for (const std::string p : {"parallel", "before_attention"}) {
    LMModel b(base_cfg(), cfg(p));
    auto pa = a->named_parameters();
    auto pb = b->named_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (auto& kv : pb) kv.value().copy_(pa[kv.key()]);  // same names, same shapes
    at::Tensor yb = b->forward(codes).text_logits;
    EXPECT_GT((ya - yb).abs().max().item<double>(), 1e-4) << p;
  }
  try {
    cfg("paralel").validate(4);
    ADD_FAILURE() << "a mistyped placement was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("ttt.placement: 'paralel'"), std::string::npos) << e.what();
  }
}

TEST(Adapter, ParameterCountMatchesLoRAOfTheSameRank) {
  TTTIntegrationConfig t = TTTIntegrationConfig::from_yaml(YAML::Load(
      "enable: true\nvariant: adapter\nlayers: \"2\"\nadapter_rank: 8\nadapter_targets: [self_attn.in_proj]"));
  LMModel m(base_cfg(), t);
  int64_t n = 0;
  for (auto& kv : m->named_parameters())
    if (is_ttt_param(kv.key())) n += kv.value().numel();
  const int64_t D = base_cfg().dim, lora = nn::lora_parameters(D, 3 * D, 8);
  ttt::TTTConfig inner;
  inner.hidden_size = 8;
  inner.num_attention_heads = 1;
  EXPECT_EQ(n, adapter_parameters(D, 3 * D, inner));
  const auto* adapter = adapters_of(*m->transformer->layer_ptrs[2]).at(0);
  EXPECT_EQ(adapter->down->weight.numel() + adapter->up->weight.numel(), lora);
  EXPECT_LT(n - lora, 8 * 8 * 7);  // only the r×r TTT layer on top
}

TEST(Adapter, ConfigErrorsNameTheField) {
  auto err = [](const std::string& y, const std::string& lora = "") {
    try {
      LMModel m(base_cfg(), TTTIntegrationConfig::from_yaml(YAML::Load("enable: true\nlayers: \"1\"\n" + y)),
                lora.empty() ? LoRAConfig{} : LoRAConfig::from_yaml(YAML::Load(lora)));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err("variant: adapter\nadapter_targets: [self_attn.q_proj]").find("ttt.adapter_targets"),
            std::string::npos);
  EXPECT_NE(err("variant: adapter\nadapter_rank: 3").find("adapter"), std::string::npos);  // RoPE needs an even width
  EXPECT_NE(err("variant: hybrid", "enable: true\ntargets: [nothing_matches]").find("lora.targets"), std::string::npos);
  EXPECT_NE(err("variant: inplace\ninplace_lookahead: 7").find("ttt.inplace_lookahead"), std::string::npos);
}

// Gradient checkpointing of the layers without TTT: same loss and the same gradient for every
// parameter, with frozen embeddings too (the input of the first layer then needs no gradient).
TEST(GradientCheckpointing, SameGradientsWithAndWithout) {
  for (bool freeze_embeddings : {false, true}) {
    LMModel m = make(variants()[3]);  // adapter + LoRA: layers with and without TTT, LoRA in layer 0
    for (auto& kv : m->named_parameters())
      kv.value().set_requires_grad(!(freeze_embeddings && kv.key().find("emb") != std::string::npos));
    at::Tensor codes = random_codes(m, 2, 14, 8);
    std::map<std::string, at::Tensor> grads[2];
    double loss[2];
    for (int ck = 0; ck < 2; ++ck) {
      m->transformer->gradient_checkpointing = ck == 1;
      m->depformer->gradient_checkpointing = ck == 1;
      LMOutput o = m->forward(codes);
      at::Tensor l = o.text_logits.nan_to_num(0).pow(2).mean() + o.logits.nan_to_num(0).pow(2).mean();
      l.backward();
      loss[ck] = l.item<double>();
      for (auto& kv : m->named_parameters()) {
        if (!kv.value().requires_grad()) continue;
        grads[ck][kv.key()] = kv.value().grad().defined() ? kv.value().grad().clone() : at::Tensor();
        kv.value().mutable_grad() = at::Tensor();
      }
    }
    EXPECT_DOUBLE_EQ(loss[0], loss[1]);
    for (auto& [n, g] : grads[0]) {
      ASSERT_TRUE(g.defined()) << n;
      ASSERT_TRUE(grads[1][n].defined()) << n << " lost its gradient under checkpointing (frozen embeddings: "
                                         << freeze_embeddings << ")";
      EXPECT_LT(test::max_abs_diff(g, grads[1][n]), 1e-6) << n;
    }
  }
}
