// Per-rank memory plan of `moshi-ttt train` (see memory_plan.h).
//
// The activation estimate follows what autograd keeps for the backward of each op of nn/transformer.cpp,
// lm/lm_model.cpp and train/loss.cpp (counted per token, in the parameters' dtype p or in float32 where
// the code computes in float32), plus the transient peaks of the loss and of recomputing a checkpointed
// layer. The few coefficients that are not a plain count of saved tensors (TTT blocks, backward
// transients) were fitted to PeakMemory measurements of whole training steps of the `small` preset on
// the CPU (float32 and bfloat16, batch 1–4 × 64–256 frames, with and without checkpointing, LoRA and full
// fine-tuning); tests/unit/memory_plan_test.cpp keeps the plan within 10 % of such a measurement.
#include "train/memory_plan.h"

#include "dist/grad_buckets.h"
#include "nn/meta_build.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <unordered_set>

#include "lm/ttt_addons.h"
#include "lm/ttt_integration.h"
#include "train/trainer.h"
#include "util/error.h"

namespace mt::train {

namespace {

constexpr double kF32 = 4;  // bytes of a float32 element (optimizer state, buckets, loss, TTT inner state)

double dtype_bytes(const std::string& param_dtype) {
  if (param_dtype == "bfloat16") return 2;
  if (param_dtype == "float32") return 4;
  fail("memory plan: param_dtype '", param_dtype, "' is neither bfloat16 nor float32");
}

int64_t group_of(const std::string& name) {
  if (name.find("gating_alpha") != std::string::npos) return 2;
  return lm::is_ttt_param(name) ? 1 : 0;
}

// ---- data parallel: the buckets of dist::GradBuckets, from sizes only ------------------------------

// The trainable parameters as train::DataParallel hands them to GradBuckets (optimizer group by group,
// registration order within each), bucketed by the same function.
std::vector<dist::BucketLayout> plan_buckets(const std::vector<PlannedParam>& ps, double cap_mb, int64_t world) {
  std::vector<PlannedParam> order;
  for (const auto& q : ps)
    if (q.trainable) order.push_back(q);
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.group < b.group; });
  std::vector<int64_t> numels, tags;
  for (const auto& q : order) numels.push_back(q.numel), tags.push_back(q.group);
  return dist::assign_buckets(numels, tags, world, dist::BucketOptions::from_cap_mb(cap_mb));
}

// ---- TTT state ------------------------------------------------------------------------------------

// One stream of a TTT inner layer (ttt::TTTState once materialised): per inner layer the weights and
// the mini-batch's gradient sum, both [nh, d_in + 1, d_out] float32, and with share_qk the causal convs'
// tails [C, kernel − 1] in the parameters' dtype.
double inner_state_bytes(const ttt::TTTConfig& c, double p) {
  double n = 0;
  for (int64_t l = 0; l < c.inner_layers(); ++l)
    n += 2 * kF32 * static_cast<double>(c.num_attention_heads * (c.inner_in(l) + 1) * c.inner_out(l));
  if (c.share_qk) n += p * static_cast<double>(c.hidden_size * std::max<int64_t>(c.conv_kernel - 1, 0));
  return n;
}

// ---- activations ----------------------------------------------------------------------------------

// What every term needs: the element size p of parameters and activations, and the step's shape.
struct Shape {
  double p = 2;
  double B = 1, T = 1;  // one micro-batch: B sequences of T frames
  bool ckpt = true;
};

bool f32_norm(const std::string& kind) { return kind == "rms_norm_f32" || kind == "layer_norm_f32"; }

// Whether a norm reads the residual stream tensor itself (keeping it for backward) rather than a
// float32 copy of it: then the stream tensors between norms stay alive.
bool norm_aliases(const std::string& kind, double p) { return !f32_norm(kind) || p == kF32; }

// Bytes per token a Norm of width d keeps: RMSNorm its α·rsqrt(mean x²) factor [d] (and the float32
// copy of x when it upcasts); LayerNorm only x (or its copy) and two scalars. `output`: the normed
// output, kept by the linear that reads it when that linear's input is needed.
double norm_kept(const std::string& kind, double d, double p, bool output) {
  const bool rms = kind.rfind("rms", 0) == 0;
  const bool copies = !norm_aliases(kind, p);
  const double factor_bytes = f32_norm(kind) ? kF32 : p;
  return d * ((copies ? kF32 : 0) + (rms ? factor_bytes : 0) + (output ? p : 0));
}

// Σ rank over the LoRA linears under `m`: each keeps the rank-r product A x (p per element) for B.
double lora_ranks(const torch::nn::Module& m) {
  double r = 0;
  for (const auto& sub : m.modules(/*include_self=*/true))
    if (const auto* lin = dynamic_cast<const nn::LinearImpl*>(sub.get()); lin && lin->lora_A)
      r += static_cast<double>(lin->lora_A->out_features());
  return r;
}

// Bytes per token one layer without add-ons keeps for its backward when its forward is recorded
// (TransformerLayerImpl::forward), for sequences of `seq` tokens. keep_inputs: its linears' inputs are
// needed (their weights train, or LoRA sits on them); frozen linears keep nothing of their input.
double layer_kept(const nn::TransformerLayerImpl& l, double p, double seq, bool keep_inputs) {
  const nn::TransformerConfig& c = l.cfg;
  const double D = static_cast<double>(c.d_model), Dh = static_cast<double>(c.head_dim());
  const double heads = static_cast<double>(c.num_heads);
  const bool rope = c.positional_embedding == "rope" || c.positional_embedding == "sin_rope";
  double b = 2 * norm_kept(c.norm, D, p, keep_inputs);
  if (norm_aliases(c.norm, p)) b += 2 * p * D;  // h = x + attn and the layer's output, read by the next norms
  // Attention: qkv [3D] (q, k, v are views of it), RoPE'd q and k [2D] with their float32 cos/sin
  // tables [Dh/2 each, per token], SDPA's output [D] and log-sum-exp [heads], the heads merged for out_proj.
  b += p * D * (3 + (rope ? 2 : 0) + 1 + (keep_inputs ? 1 : 0)) + kF32 * heads + (rope ? kF32 * Dh : 0);
  // A window shorter than the sequence: the boolean mask [T, T] per sequence, kept by SDPA.
  if (c.context && static_cast<double>(*c.context) < seq) b += seq;
  if (c.layer_scale) b += 2 * p * D;  // x · scale keeps x for the scale's gradient
  if (c.gating == "none") {
    b += p * static_cast<double>(c.dim_feedforward[0]) * (keep_inputs ? 2 : 1);  // linear1 out; gelu out
  } else {
    // Gated FFN: linear_in's output [2H] (its halves: the activation's input and the value), act(gate)
    // [H], and the product [H] read by linear_out.
    const double H = static_cast<double>(nn::gating_hidden(c.d_model, c.dim_feedforward[0]));
    b += p * H * (3 + (keep_inputs ? 1 : 0));
  }
  return b + p * lora_ranks(l);
}

// A TTT add-on's own activations per token, beyond the layer it sits in, fitted (see the top of the
// file) to the structure of its forward: the hybrid block's norm, the TTT layer's projections XQ, XK,
// XV, its output, post-norm and gate product in p (≈ 9 × width) and the scan's float32 inputs (≈ 3 ×
// width; its inner states are kept only at checkpoint-group boundaries); an adapter the same at its
// rank r plus its down-projection; In-Place the float32 activations h [H] and targets [D] of its chunked
// update beside the gated FFN it replaces.
double addon_kept(const nn::AddonBase& a, double p) {
  if (const auto* h = dynamic_cast<const lm::HybridTTTImpl*>(&a)) {
    const double C = static_cast<double>(h->layer->config().hidden_size);
    return 9 * C * p + 3 * C * kF32;
  }
  if (const auto* ad = dynamic_cast<const lm::TTTAdapterImpl*>(&a)) {
    const double r = static_cast<double>(ad->layer->config().hidden_size);
    return 10 * r * p + 3 * r * kF32;
  }
  if (const auto* ip = dynamic_cast<const lm::InPlaceTTTImpl*>(&a)) {
    const auto& c = ip->inner().cfg;
    return kF32 * static_cast<double>(2 * c.hidden + 2 * c.dim);
  }
  return 0;
}

// Trainable parameter tensors, by identity (so that any submodule can ask about its own).
using TrainSet = std::unordered_set<const void*>;
bool any_trains(const torch::nn::Module& m, const TrainSet& t) {
  for (const auto& p : m.parameters(/*recurse=*/true))
    if (t.count(p.unsafeGetTensorImpl())) return true;
  return false;
}

struct Tower {
  double kept = 0;       // bytes per token (per position) kept until the backward reaches them
  double recompute = 0;  // bytes per token of the largest checkpointed layer, rebuilt during backward
};

// The bytes per token (position) a stack of layers keeps. `records`: whether anything upstream trains,
// so that autograd records the stack; it becomes true at the first layer that trains.
Tower stack_kept(const nn::StreamingTransformerImpl& tr, const TrainSet& t, double p, double seq, bool ckpt,
                 bool& records) {
  Tower out;
  const double D = static_cast<double>(tr.cfg.d_model);
  bool prev_ckpt = false;
  for (size_t i = 0; i < tr.layer_ptrs.size(); ++i) {
    const nn::TransformerLayerImpl& l = *tr.layer_ptrs[i];
    const bool trains = any_trains(l, t);
    records = records || trains;
    if (!records) continue;
    const double full = layer_kept(l, p, seq, trains);
    if (ckpt && !l.has_addons()) {
      // LayerCheckpoint keeps the layer's input (the previous layer's output, unless that one already does).
      if (!(i > 0 && !prev_ckpt && norm_aliases(l.cfg.norm, p))) out.kept += p * D;
      out.recompute = std::max(out.recompute, full);
      prev_ckpt = true;
      continue;
    }
    out.kept += full;
    for (const nn::AddonBase* a : l.addons()) out.kept += addon_kept(*a, p);
    prev_ckpt = false;
  }
  return out;
}

// The estimate of one micro-batch's forward + loss + backward, beyond weights, gradients, optimizer
// state and carried TTT state. Tokens: N = B × T through the temporal transformer (D wide), N × K
// positions through the depformer (Dd wide, sequences of K = dep_q), logits N × V (text) and N × K × card.
struct Activations {
  double peak = 0;  // the largest of the peaks below
  double held = 0;  // what is still alive late in the backward, when most gradients exist
};

Activations microbatch_bytes(const lm::LMModelImpl& m, const TrainSet& t, const Shape& s) {
  const lm::LMConfig& c = m.cfg;
  const double p = s.p, N = s.B * s.T, D = static_cast<double>(c.dim);
  const double K = static_cast<double>(c.dep_q), V = static_cast<double>(c.text_out_card());
  const double card = static_cast<double>(c.card), Dd = static_cast<double>(c.depformer_dim);
  bool records = false;
  for (const auto& e : m.emb->modules(false)) records = records || any_trains(*e, t);
  records = records || any_trains(*m.text_emb, t);
  // Temporal transformer, its output norm (aliased stream or float32 copy) and the text head's input.
  const Tower tt = stack_kept(*m.transformer, t, p, s.T, s.ckpt, records);
  records = records || any_trains(*m.out_norm, t) || any_trains(*m.text_linear, t);
  const double temporal = tt.kept + (records ? norm_kept(c.norm, D, p, true) : 0);
  Tower dt;
  double dep_io = 0;
  if (c.dep_q > 0) {
    for (const auto& e : m.depformer_in->modules(false)) records = records || any_trains(*e, t);
    // Depformer input x [K, Dd] (stacked embeddings + projections) and output y [K, Dd] (read by the heads).
    dep_io = records ? 2 * p * Dd * K : 0;
    dt = stack_kept(*m.depformer, t, p, K, s.ckpt, records);
  }
  const double saved = N * (p * D + temporal + K * dt.kept + dep_io);
  // Logits as LMOutput holds them through the whole backward (undelayed copies, p), and the loss's
  // float32 log-softmax outputs; the loss's backward adds two float32 gradients of the larger head.
  const double logits = N * (V + K * card) * p;
  const double loss = N * (V + K * card) * kF32 + 2 * kF32 * N * std::max(V, K * card);
  // Forward transient of the depformer: the per-codebook inputs and logits lists live until it returns.
  const double dep_fwd = N * K * (p * Dd + 2 * p * card);
  // Backward through a checkpointed layer: the layer rebuilt, and gradients of about half of it. The
  // temporal transformer's comes last, beside nearly all gradients.
  const double recompute = 1.5 * std::max(N * tt.recompute, N * K * dt.recompute);
  Activations a;
  a.held = logits + 1.5 * N * tt.recompute;
  // The peaks: (1) the loss's backward starts, everything saved alive; (2) the depformer's forward
  // returns (its lists beside the temporal part and the text logits); (3) a checkpointed layer is rebuilt
  // in the backward, beside the checkpoints' inputs and the logits.
  const double peak_loss = saved + logits + loss;
  const double peak_dep = N * (p * D + temporal) + N * V * p + N * K * (dt.kept + dep_io) + dep_fwd;
  const double peak_recompute = N * p * D * static_cast<double>(c.num_layers) + logits + recompute;
  a.peak = std::max({peak_loss, peak_dep, peak_recompute});
  return a;
}

// AdamW's step temporaries: sqrt(v) and its scaled copy (float32), plus the float32 upcast of the
// gradient for bfloat16 parameters, for the largest tensor (or shard) it steps.
double optimizer_step_bytes(int64_t largest, double p) {
  return static_cast<double>(largest) * kF32 * (p == kF32 ? 2 : 3);
}

std::string gb(int64_t bytes) {
  char b[64];
  std::snprintf(b, sizeof b, "%10.2f %10.2f", static_cast<double>(bytes) / 1e9,
                static_cast<double>(bytes) / static_cast<double>(int64_t{1} << 30));
  return b;
}

std::string gb1(int64_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", static_cast<double>(bytes) / 1e9);
  return b;
}

std::string grouped(int64_t n) {
  std::string s = std::to_string(n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

}  // namespace

std::vector<PlannedParam> planned_params(const lm::LMModelImpl& m, const TrainConfig& cfg) {
  std::vector<PlannedParam> out;
  for (const auto& kv : m.named_parameters())
    out.push_back({kv.key(), kv.value().numel(), trains(cfg, kv.key()), group_of(kv.key())});
  return out;
}

int64_t ttt_state_bytes_per_stream(const lm::LMModelImpl& m, const std::string& param_dtype) {
  const double p = dtype_bytes(param_dtype);
  double n = 0;
  for (const auto& l : m.transformer->layer_ptrs) {
    for (const nn::AddonBase* a : l->addons()) {
      if (const auto* h = dynamic_cast<const lm::HybridTTTImpl*>(a)) {
        n += inner_state_bytes(h->layer->config(), p);
      } else if (const auto* ad = dynamic_cast<const lm::TTTAdapterImpl*>(a)) {
        n += inner_state_bytes(ad->layer->config(), p);
      } else if (const auto* ip = dynamic_cast<const lm::InPlaceTTTImpl*>(a)) {
        // ttt::InPlaceState, float32: ΔW [D, H], the incomplete chunk's activations [C, H] and targets [C, D].
        const auto& c = ip->inner().cfg;
        n += kF32 * static_cast<double>(c.dim * c.hidden + c.chunk_size * (c.hidden + c.dim));
      } else {
        fail("memory plan: layer add-on '", a->unit(), "' has no known state size");
      }
    }
  }
  return static_cast<int64_t>(n);
}

namespace {
Activations estimate(const lm::LMModelImpl& m, const TrainConfig& cfg) {
  TrainSet t;
  for (const auto& kv : m.named_parameters())
    if (trains(cfg, kv.key())) t.insert(kv.value().unsafeGetTensorImpl());
  Shape s;
  s.p = dtype_bytes(cfg.param_dtype);
  s.B = static_cast<double>(cfg.batch_size);
  s.T = static_cast<double>(cfg.chunk_frames());
  s.ckpt = cfg.gradient_checkpointing;
  return microbatch_bytes(m, t, s);
}
}  // namespace

int64_t activation_bytes(const lm::LMModelImpl& m, const TrainConfig& cfg) {
  return static_cast<int64_t>(estimate(m, cfg).peak);
}

namespace {
// What data parallel changes in the plan: elements of the parameters' own gradients, of AdamW's state,
// and of the largest tensor AdamW steps; the float32 buckets (and ZeRO-2 shards) into r.grad_buckets.
struct Elements {
  int64_t grads = 0, optim = 0, largest = 0;
};

Elements data_parallel(MemoryPlan& r, const std::vector<PlannedParam>& ps, const TrainConfig& cfg, Elements e) {
  if (r.world_size == 1) return e;
  const int64_t w = r.world_size;
  int64_t padded = 0, shards = 0, biggest = 0, biggest_shard = 0, biggest_padded = 0, n_buckets = 0;
  for (const auto& b : plan_buckets(ps, cfg.bucket_cap_mb, w)) {
    ++n_buckets;
    biggest_padded = std::max(biggest_padded, b.padded);
    padded += b.padded;
    shards += b.padded / w;
    biggest = std::max(biggest, b.numel);
    biggest_shard = std::max(biggest_shard, b.padded / w);
  }
  if (r.sharding != Sharding::kNone) e.optim = shards, e.largest = biggest_shard;  // AdamW on this rank's shards
  if (r.sharding == Sharding::kGradients) {
    // ZeRO-2: this rank's float32 shard of each bucket, and at most GradBuckets::kInFlight full float32
    // buckets in flight; the parameters' own gradients are released bucket by bucket as they are copied
    // in, unless earlier micro-batches accumulate into them.
    const int64_t in_flight = std::min<int64_t>(static_cast<int64_t>(dist::GradBuckets::kInFlight), n_buckets);
    r.grad_buckets = (shards + in_flight * biggest_padded) * static_cast<int64_t>(kF32);
    if (cfg.num_microbatches == 1) e.grads = biggest;
  } else {
    // Every rank keeps one float32 bucket copy of all trainable gradients (DDP's flat buckets).
    r.grad_buckets = padded * static_cast<int64_t>(kF32);
  }
  return e;
}
}  // namespace

MemoryPlan plan_memory(const lm::LMModelImpl& m, const TrainConfig& cfg, int64_t world_size) {
  MT_CHECK(world_size >= 1, "memory plan: world size must be >= 1, got ", world_size);
  MT_CHECK(cfg.batch_size >= 1 && cfg.num_microbatches >= 1, "memory plan: batch_size (", cfg.batch_size,
           ") and num_microbatches (", cfg.num_microbatches, ") must be >= 1");
  MemoryPlan r;
  r.world_size = world_size;
  r.sharding = world_size > 1 ? cfg.sharding : Sharding::kNone;
  r.param_dtype = cfg.param_dtype;
  r.gradient_checkpointing = cfg.gradient_checkpointing;
  r.batch_size = cfg.batch_size;
  r.num_microbatches = cfg.num_microbatches;
  r.chunk_frames = cfg.chunk_frames();
  const double p = dtype_bytes(cfg.param_dtype);
  const auto bytes = [](double v) { return static_cast<int64_t>(v); };

  const std::vector<PlannedParam> ps = planned_params(m, cfg);
  Elements e;
  for (const auto& q : ps) {
    r.parameters += q.numel;
    if (q.trainable) r.trainable += q.numel, e.largest = std::max(e.largest, q.numel);
  }
  e.grads = e.optim = r.trainable;
  e = data_parallel(r, ps, cfg, e);
  r.weights = bytes(static_cast<double>(r.parameters) * p);
  r.gradients = bytes(static_cast<double>(e.grads) * p) + r.grad_buckets;
  // AdamW: exp_avg and exp_avg_sq in float32, and a float32 master of each bfloat16 parameter; sharded,
  // AdamW steps this rank's float32 shards (train::DataParallel), which are masters whatever the dtype.
  const bool sharded = r.sharding != Sharding::kNone;
  r.optimizer = bytes(static_cast<double>(e.optim) * (2 * kF32 + (sharded || p != kF32 ? kF32 : 0)));
  if (m.transformer->has_addons()) {
    r.ttt_streams = cfg.batch_size * cfg.num_microbatches;
    r.ttt_state = ttt_state_bytes_per_stream(m, cfg.param_dtype) * r.ttt_streams;
  }
  // Activations peak at the loss, before the backward made any gradient: with one micro-batch the
  // parameters' gradients (not the buckets, allocated up front) are not there yet, so only the excess
  // over them adds to the peak. Later in the backward the logits (and a rebuilt checkpointed layer) are
  // still alive beside nearly all gradients; after it, AdamW's temporaries are.
  const Activations a = estimate(m, cfg);
  r.microbatch_activations = bytes(a.peak);
  const double absent = cfg.num_microbatches == 1 ? static_cast<double>(e.grads) * p : 0;
  r.activations = bytes(std::max({a.peak - absent, a.held, optimizer_step_bytes(e.largest, sharded ? kF32 : p)}));
  return r;
}

MemoryPlan plan_memory(const TrainConfig& cfg, int64_t world_size) {
  lm::LMModel m{nullptr};
  {
    nn::MetaCpuTensors meta;
    m = lm::LMModel(cfg.model.lm, cfg.model.ttt, cfg.model.lora);
  }
  return plan_memory(*m, cfg, world_size);
}

std::string format_plan(const MemoryPlan& p) {
  const char* sharding = p.sharding == Sharding::kOptimizer   ? " (ZeRO-1)"
                         : p.sharding == Sharding::kGradients ? " (ZeRO-2)"
                                                              : "";
  std::string s = str("memory plan per rank: ", p.world_size, p.world_size == 1 ? " rank" : " ranks", ", sharding ",
                      name(p.sharding), sharding, ", param_dtype ", p.param_dtype, "\n");
  s += str("  parameters ", grouped(p.parameters), ", trainable ", grouped(p.trainable), "; micro-batch ", p.batch_size,
           " x ", p.chunk_frames, " frames, ", p.num_microbatches, " per step, gradient checkpointing ",
           p.gradient_checkpointing ? "on" : "off", "\n");
  s += "                                GB        GiB\n";
  auto line = [&](const char* what, int64_t bytes, const std::string& note = "") {
    char b[64];
    std::snprintf(b, sizeof b, "  %-24s", what);
    s += b + gb(bytes) + (note.empty() ? "" : "   " + note) + "\n";
  };
  line("weights", p.weights);
  line("gradients", p.gradients, p.grad_buckets ? str("of which float32 buckets ", gb1(p.grad_buckets), " GB") : "");
  line("optimizer state", p.optimizer);
  line("TTT state", p.ttt_state, p.ttt_streams ? str(p.ttt_streams, " streams") : "");
  line("activations (estimate)", p.activations,
       str("one micro-batch: ", gb1(p.microbatch_activations), " GB at its peak",
           p.num_microbatches == 1 ? ", before any gradient exists" : ""));
  line("total (expected peak)", p.total());
  return s;
}

}  // namespace mt::train
