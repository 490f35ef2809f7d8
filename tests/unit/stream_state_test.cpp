// The add-on seam (nn/addon.h) and the one stream-state interface (nn/stream_state.h): every kind of
// per-stream memory saves and restores itself, and an add-on the transformer has never heard of plugs in.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "lm/lm_model.h"
#include "lm_test_util.h"
#include "nn/transformer.h"
#include "test_util.h"

using namespace mt;

namespace {

// Streams `codes` [B, K, T] through the temporal transformer from `st`, one step at a time.
at::Tensor stream(const lm::LMModelImpl& m, const at::Tensor& delayed, nn::TransformerState& st) {
  std::vector<at::Tensor> outs;
  for (int64_t t = 0; t < delayed.size(2); ++t) outs.push_back(m.forward_text(delayed.narrow(2, t, 1), &st).first);
  return at::cat(outs, 1);
}

}  // namespace

// A state written in the middle of a stream and read into a fresh one continues it exactly: KV rings,
// offsets and the TTT states of every variant (hybrid inner weights and pending gradient sums, adapters,
// the In-Place fast weight and its half-filled chunk). A missing entry is an error naming it.
TEST(StreamState, WrittenMidStreamAndReadBackContinuesExactly) {
  for (const char* y :
       {"variant: hybrid\nmini_batch_size: 4\nshare_qk: true", "variant: adapter\nadapter_rank: 4\nmini_batch_size: 4",
        "variant: inplace\ninplace_chunk_size: 4\ninplace_lr: 0.5"}) {
    lm::LMModel m(test::tiny_lm(), test::ttt_yaml(y), lm::LoRAConfig{});
    m->init_weights(5);
    {
      at::NoGradGuard ng;  // off the zero init (adapter up-projection), so every state shows in the outputs
      for (auto& p : m->parameters()) p.add_(at::randn(p.sizes()) * 0.05);
    }
    at::InferenceMode im;
    const at::Tensor delayed = m->delayed_input(test::random_codes(m->cfg, 2, 13, 7));
    nn::TransformerState a = m->make_state(2);
    stream(*m, delayed.narrow(2, 0, 6), a);  // 6 steps: inside a mini-batch / chunk
    nn::TensorMap saved;
    a.write("s.", saved);
    const at::Tensor want = stream(*m, delayed.narrow(2, 6, 7), a);

    nn::TransformerState b = m->make_state(2);
    b.read("s.", saved, at::kCPU);
    EXPECT_TRUE(at::equal(stream(*m, delayed.narrow(2, 6, 7), b), want)) << y;
    EXPECT_GT(a.updates(), 0) << y << ": the TTT state never updated";

    // A fresh state (never read) gives other outputs: the restored state carried something.
    nn::TransformerState c = m->make_state(2);
    EXPECT_FALSE(at::equal(stream(*m, delayed.narrow(2, 6, 7), c), want)) << y;

    nn::TensorMap partial = saved;
    std::string dropped;  // the last entry of layer 1's TTT state (position / tokens: always read)
    for (const auto& [k, v] : saved)
      if (k.find(".l1.") != std::string::npos) dropped = k;
    ASSERT_FALSE(dropped.empty()) << y << ": no TTT state entry was written";
    partial.erase(dropped);
    nn::TransformerState d = m->make_state(2);
    test::expect_error([&] { d.read("s.", partial, at::kCPU); }, {dropped});
  }
}

// reset_slot(b) of the whole state starts slot b afresh and leaves the other slot as it was.
TEST(StreamState, ResetSlotStartsOneSlotAfresh) {
  lm::LMModel m(test::tiny_lm(), test::ttt_yaml("variant: hybrid\nmini_batch_size: 4"), lm::LoRAConfig{});
  m->init_weights(3);
  at::InferenceMode im;
  const at::Tensor d = m->delayed_input(test::random_codes(m->cfg, 2, 12, 11));
  nn::TransformerState st = m->make_state(2), ref = m->make_state(2), fresh = m->make_state(2);
  stream(*m, d.narrow(2, 0, 7), st);
  stream(*m, d.narrow(2, 0, 7), ref);
  st.reset_slot(1);
  const at::Tensor got = stream(*m, d.narrow(2, 7, 5), st);
  // Slots at different positions run in separate TTT groups, so slot 0 matches to rounding, not bits.
  EXPECT_LT(test::max_abs_diff(got.select(0, 0), stream(*m, d.narrow(2, 7, 5), ref).select(0, 0)), 1e-5);
  EXPECT_LT(test::max_abs_diff(got.select(0, 1), stream(*m, d.narrow(2, 7, 5), fresh).select(0, 1)), 1e-5);
}

namespace {

// A state the transformer knows nothing about: tokens seen per slot.
struct CountState final : nn::StreamState {
  explicit CountState(int64_t batch) : seen(at::zeros({batch}, at::kLong)) {}
  at::Tensor seen;
  void reset() override { seen.zero_(); }
  void reset_slot(int64_t b) override { seen.select(0, b).zero_(); }
  void write(const std::string& p, nn::TensorMap& out) const override { out[p + "seen"] = nn::saved(seen); }
  void read(const std::string& p, const nn::TensorMap& in, const at::Device&) override {
    seen.copy_(nn::need(in, p, "seen"));
  }
};

// An add-on after attention that adds bias · (tokens the slot has seen, counting this one): it depends
// on its stream state, so forward and step only agree if the layer hands it the state at every call.
struct CountingAddon final : nn::LayerAddon {
  CountingAddon() { bias = register_parameter("bias", at::full({8}, 0.01)); }
  at::Tensor after_attention(const at::Tensor& x, const at::Tensor& h, const nn::StepContext& c) const override {
    auto& st = static_cast<CountState&>(c.slot_state(slot));
    const int64_t T = h.size(1);
    at::Tensor n = st.seen.view({-1, 1}) + at::arange(1, T + 1, at::kLong).view({1, -1});  // [B, T]
    st.seen.add_(T);
    return h + n.unsqueeze(-1).to(h.scalar_type()) * bias;
  }
  std::unique_ptr<nn::StreamState> make_state(int64_t batch) const override {
    return std::make_unique<CountState>(batch);
  }
  std::string state_name() const override { return "count"; }
  std::string unit() const override { return "count"; }
  void init(uint64_t) override {}
  at::Tensor bias;
};

}  // namespace

// The seam is the only contract: a new add-on changes the layer's output, keeps its own state through
// the transformer's state (forward == steps, reset, write / read), and needs no change to nn/.
TEST(AddonSeam, ANewAddonPlugsInThroughTheSeamAlone) {
  nn::TransformerConfig c;
  c.d_model = 8;
  c.num_heads = 2;
  c.num_layers = 2;
  c.dim_feedforward = {16};
  c.positional_embedding = "rope";
  c.context = 6;
  nn::StreamingTransformer t(c);
  for (auto& p : t->parameters()) p.detach().normal_(0, 0.2);
  at::NoGradGuard ng;
  const at::Tensor x = at::randn({2, 9, 8});
  const at::Tensor plain = t->forward(x);
  t->layer_ptrs[1]->add(std::make_shared<CountingAddon>());
  ASSERT_TRUE(t->has_addons());
  const at::Tensor whole = t->forward(x);
  EXPECT_GT((whole - plain).abs().max().item<double>(), 1e-3) << "the add-on changed nothing";

  nn::TransformerState st = t->make_state(2);
  std::vector<at::Tensor> steps;
  for (int64_t i = 0; i < 9; ++i) steps.push_back(t->step(x.narrow(1, i, 1), st));
  EXPECT_LT(test::max_abs_diff(at::cat(steps, 1), whole), 1e-5);
  EXPECT_EQ(st.addons[1].as<CountState>(0)->seen[0].item<int64_t>(), 9);

  nn::TensorMap saved;
  st.write("", saved);
  EXPECT_TRUE(saved.count("l1.count.seen"));
  st.reset();
  EXPECT_EQ(st.addons[1].as<CountState>(0)->seen.sum().item<int64_t>(), 0);
  st.read("", saved, at::kCPU);
  EXPECT_EQ(st.addons[1].as<CountState>(0)->seen[1].item<int64_t>(), 9);
}
