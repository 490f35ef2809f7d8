#include "train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <unistd.h>

#include <atomic>
#include <csignal>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/hub.h"
#include "lm/lm_model.h"
#include "lm/ttt_probes.h"
#include "train/audio_data.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/loss.h"
#include "train/memory_plan.h"
#include "train/optim.h"
#include "train/run.h"
#include "train/run_folder.h"
#include "util/error.h"
#include "util/peak_memory.h"
#include "util/pitfall_switch.h"
#include "util/runtime.h"

namespace fs = std::filesystem;

namespace mt::train {

namespace {

using TensorMap = std::map<std::string, at::Tensor>;

bool is_alpha(const std::string& name) { return name.find("gating_alpha") != std::string::npos; }

std::string fmt_duration(double s) {
  char b[32];
  if (!std::isfinite(s) || s < 0) return "?";
  // Round to whole seconds (minutes) first, so that 119.6 s reads 2m00s, not 1m60s.
  const long long secs = std::llround(s);
  if (secs < 90)
    std::snprintf(b, sizeof b, "%llds", secs);
  else if (secs < 5400)
    std::snprintf(b, sizeof b, "%lldm%02llds", secs / 60, secs % 60);
  else {
    const long long mins = std::llround(s / 60);
    std::snprintf(b, sizeof b, "%lldh%02lldm", mins / 60, mins % 60);
  }
  return b;
}

// The token index for a data source: itself, or for an audio JSONL (moshi-finetune's format) the index
// of its Mimi tokens in the cache, encoding what is not cached yet.
std::string token_index(const TrainConfig& cfg, const std::string& source, const at::Device& dev, bool quiet) {
  if (!is_audio_jsonl(source)) return source;
  AudioDataConfig a;
  // Codec and tokenizer only now that an audio dataset needs them (hf:// paths download here).
  a.mimi_weights = io::hub::resolve(cfg.model.mimi_weights);
  a.mimi_config = io::hub::resolve(cfg.model.mimi_config);
  a.tokenizer = io::hub::resolve(cfg.model.tokenizer);
  a.moshi_codebooks = cfg.model.lm.dep_q;
  a.user_codebooks = cfg.model.lm.n_q - cfg.model.lm.dep_q;
  a.text.frame_rate = cfg.frame_rate;
  a.text.pad = cfg.model.lm.existing_text_padding_id.value_or(3);
  a.text.in_word_pad = a.text.pad;
  a.text.epad = cfg.model.lm.existing_text_end_padding_id;
  a.device = dev.str();
  a.quiet = quiet;
  a.cache_dir = cfg.token_cache;
  a.user_stream = cfg.user_stream;
  if (a.cache_dir.empty()) a.cache_dir = mt::cache_dir("tokens");
  return prepare_audio_tokens(source, a);
}

// The token index, made once per run: with several ranks, rank 0 encodes what is not cached yet and
// the others take its answer (encoding or hashing the audio on every rank would repeat the work N times).
std::string shared_token_index(Run& r, const std::string& source, const std::string& what) {
  auto it = r.token_indexes.find(what);
  if (it != r.token_indexes.end()) return it->second;
  std::string index;
  if (!r.group || r.leader()) index = token_index(r.cfg, source, r.dev, r.opt.quiet || !r.leader());
  if (r.group) index = r.group->share_from_leader(what + " token index", index);
  return r.token_indexes[what] = index;
}

// SIGINT / SIGTERM: the step in progress finishes, a checkpoint is written and the run stops cleanly
// (the CLI exits with 128 + the signal). A second signal gets the default action (immediate exit).
std::atomic<int> g_stop_signal{0};

void on_stop_signal(int sig) {
  g_stop_signal.store(sig);
  std::signal(sig, SIG_DFL);
}

struct StopSignals {
  struct sigaction old_int {
  }, old_term{};
  StopSignals() {
    g_stop_signal.store(0);
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
};

// Token ids outside the model's vocabularies would index past an embedding table (libtorch's
// "index out of range in self", naming nothing): name the file and the stream instead.
void check_token_range(const lm::LMConfig& c, const TokenBatch& b, const std::string& source) {
  const at::Tensor codes = b.codes;
  const at::Tensor text = codes.select(1, 0), audio = codes.narrow(1, 1, codes.size(1) - 1);
  const bool ok =
      ((text >= -1) & (text < c.text_card)).all().item<bool>() && ((audio >= -1) & (audio < c.card)).all().item<bool>();
  if (ok) return;
  for (int64_t i = 0; i < codes.size(0); ++i) {
    const at::Tensor t = codes[i][0], a = codes[i].narrow(0, 1, codes.size(1) - 1);
    if (!((t >= -1) & (t < c.text_card)).all().item<bool>())
      fail(source, ": file '", b.file_ids.at(static_cast<size_t>(i)), "': text ids outside [-1, ", c.text_card,
           ") (max ", t.max().item<int64_t>(), ")");
    if (!((a >= -1) & (a < c.card)).all().item<bool>())
      fail(source, ": file '", b.file_ids.at(static_cast<size_t>(i)), "': audio ids outside [-1, ", c.card, ") (max ",
           a.max().item<int64_t>(), ")");
  }
}

// The TTT diagnostics the metrics log, from lm::ttt_report: mean |tanh α| over the hybrid units, and
// the mean ‖W − W0‖ over every unit that reports one (probes of micro-batch 0).
double mean_over_units(const std::vector<lm::TTTUnitReport>& units, double lm::TTTUnitReport::*field,
                       bool hybrid_only) {
  double s = 0;
  int64_t n = 0;
  for (const auto& u : units)
    if ((!hybrid_only || u.unit == "hybrid") && std::isfinite(u.*field)) {
      s += u.*field;
      ++n;
    }
  return n ? s / static_cast<double>(n) : NAN;
}

double evaluate(Run& r) {
  const TrainConfig& cfg = r.cfg;
  LoaderConfig lc;
  lc.batch_size = cfg.batch_size;
  lc.chunk_frames = cfg.chunk_frames();
  lc.shuffle = false;
  lc.infinite = false;
  lc.rank = r.opt.dist.rank;
  lc.world_size = r.opt.dist.world_size;
  TokenLoader ev(read_token_index(shared_token_index(r, cfg.eval_data, "eval")), lc);
  at::NoGradGuard ng;
  std::vector<nn::LayerState> st = r.model->transformer->make_layer_states(cfg.batch_size);
  LossConfig loss_cfg{cfg.first_codebook_weight_multiplier, cfg.text_padding_weight};
  double sum = 0;
  int64_t n = 0;
  TokenBatch b;
  while (n < cfg.eval_batches && ev.next(b)) {
    apply_resets(st, b.reset);
    at::Tensor codes = b.codes.to(r.dev);
    lm::LMOutput out = r.model->forward(codes, nullptr, r.model->transformer->has_addons() ? &st : nullptr);
    LossParts lp = compute_loss(r.model->cfg, out, codes, loss_cfg, false);
    const double v = lp.total.item<double>();
    if (std::isfinite(v)) {
      sum += v;
      ++n;
    }
  }
  if (r.group) {  // every rank scored its share of the eval files
    std::vector<double> v{sum, static_cast<double>(n)};
    r.group->sum(v);
    sum = v[0];
    n = static_cast<int64_t>(v[1]);
  }
  return n ? sum / static_cast<double>(n) : NAN;
}

}  // namespace

void apply_resets(std::vector<nn::LayerState>& states, const at::Tensor& reset) {
  const at::Tensor r = reset.to(at::kCPU, at::kBool).contiguous();
  const bool* v = r.data_ptr<bool>();
  for (auto& ls : states) {
    if (ls.empty()) continue;
    for (int64_t s = 0; s < r.size(0); ++s)
      if (v[pitfall::on(7) ? 0 : s]) ls.reset_slot(s);  // tests only: pitfalls.md row 7 (resets from slot 0's file)
  }
}

StepResult train_step(const lm::LMModelImpl& m, AdamW& opt, const std::vector<OneCycle>& sched, int64_t step,
                      const std::vector<at::Tensor>& micro_codes, std::vector<std::vector<nn::LayerState>>* states,
                      const std::vector<at::Tensor>& micro_resets, const LossConfig& lc, double max_norm,
                      bool want_probes, StepHooks* hooks) {
  StepResult r;
  for (size_t g = 0; g < opt.groups().size(); ++g) {
    opt.set_lr(g, sched[g].lr_at(step));
    opt.set_beta1(g, sched[g].momentum_at(step));
    r.lr.push_back(opt.lr(g));
  }
  r.beta1 = opt.beta1(0);
  const int64_t M = static_cast<int64_t>(micro_codes.size());
  for (int64_t mb = 0; mb < M; ++mb) {
    const at::Tensor& codes = micro_codes[mb];
    std::vector<nn::LayerState>* st = states ? &(*states)[mb] : nullptr;
    if (st) {
      for (auto& ls : *st)
        if (!ls.empty()) ls.detach();  // truncated backprop through time: chunks of a file share values, not graphs
      if (!micro_resets.empty()) apply_resets(*st, micro_resets[mb]);
    }
    // Without persistent states every sequence starts afresh: a fresh state per micro-batch is the
    // same computation, and it counts the TTT updates that happened (pitfalls.md row 11).
    std::vector<nn::LayerState> fresh;
    if (!st && m.transformer->has_addons()) {
      fresh = m.transformer->make_layer_states(codes.size(0));
      st = &fresh;
    }
    std::vector<int64_t> before;
    if (st)
      for (const auto& ls : *st) before.push_back(ls.updates());
    std::vector<lm::LayerProbes> probes;
    const bool pr = want_probes && mb == 0 && m.transformer->has_addons();
    lm::LMOutput out = m.forward(codes, pr ? &probes : nullptr, st);
    LossParts lp = compute_loss(m.cfg, out, codes, lc, true);
    if (hooks && mb == M - 1) hooks->before_last_backward();
    (lp.total / static_cast<double>(M)).backward();
    const double t = lp.text.item<double>(), a = lp.audio.item<double>();
    r.text_loss.push_back(t);
    r.audio_loss.push_back(a);
    r.text += t / static_cast<double>(M);
    r.audio += a / static_cast<double>(M);
    if (r.per_codebook.empty()) r.per_codebook.assign(lp.per_codebook.size(), 0.0);
    for (size_t k = 0; k < lp.per_codebook.size(); ++k)
      r.per_codebook[k] += lp.per_codebook[k] / static_cast<double>(M);
    r.real_tokens += lp.real_tokens;
    if (pr) r.state_change = mean_over_units(lm::ttt_report(m, probes), &lm::TTTUnitReport::state_change, false);
    if (st) {
      r.ttt_updates.resize(st->size(), 0);
      for (size_t l = 0; l < st->size(); ++l) r.ttt_updates[l] += (*st)[l].updates() - before[l];
    }
  }
  if (hooks) hooks->after_backward(r);
  r.loss = r.text + r.audio;
  if (hooks && hooks->sharded()) {
    r.grad_norm = hooks->clip(opt, max_norm, r.group_grad_norm);
  } else {
    std::vector<std::vector<at::Tensor>> groups;
    for (const auto& g : opt.groups()) {
      groups.emplace_back();
      for (const auto& p : g.params) groups.back().push_back(p.second);
    }
    r.grad_norm = clip_grad_norm(groups, max_norm, &r.group_grad_norm);
  }
  r.applied = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  if (r.applied) opt.step();
  if (hooks) hooks->after_step(r.applied);
  opt.zero_grad();
  return r;
}

bool trains(bool full_finetuning, const lm::LoRAConfig& lora, const std::string& n) {
  if (full_finetuning) return true;
  if (lm::is_ttt_param(n) || lm::is_lora_param(n)) return true;
  return lora.enable && lora.ft_embed && n.find("emb") != std::string::npos;
}

bool trains(const TrainConfig& cfg, const std::string& n) { return trains(cfg.full_finetuning, cfg.model.lora, n); }

namespace {

// ---- setting a run up -------------------------------------------------------------------------
// The training device: with several ranks on a GPU machine, each takes cuda:LOCAL_RANK (as torchrun's
// users expect); a device with an explicit index is taken as given.
at::Device training_device(const Run& r) {
  at::Device d = parse_device(r.cfg.device);
  if (d.is_cuda() && !d.has_index() && r.opt.dist.active())
    d = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(r.opt.dist.local_rank));
  return d;
}

void join_ranks(Run& r) {
  if (!r.opt.dist.active()) return;
  r.group = dist::Group::join(r.opt.dist, r.dev);
  r.say(str("data parallel: ", r.opt.dist.world_size, " ranks over c10d ", dist::name(r.group->backend()),
            " (rendezvous ", r.opt.dist.master_addr, ":", r.opt.dist.master_port,
            r.opt.dist.agent_store ? ", torchrun's store" : "", "), batch_size ", r.cfg.batch_size, " per rank, ",
            r.cfg.batch_size * r.opt.dist.world_size, " in all; sharding ", name(r.cfg.sharding), ", buckets of ",
            r.cfg.bucket_cap_mb, " MiB"));
}

// Replicas must start equal (same weights, same init seed): compare a fingerprint of every tensor.
void check_replicas_agree(Run& r) {
  if (!r.group) return;
  std::vector<double> fp;
  for (const auto& kv : r.model->named_parameters()) {
    at::Tensor t = kv.value().detach().to(at::kDouble);
    fp.push_back(t.sum().item<double>());
    fp.push_back(t.square().sum().item<double>());
  }
  std::string mine(reinterpret_cast<const char*>(fp.data()), fp.size() * sizeof(double));
  std::vector<std::string> all = r.group->all_gather_bytes(mine);
  for (size_t q = 0; q < all.size(); ++q)
    MT_CHECK(all[q] == all[0], "data parallel: rank ", q, " starts from other weights than rank 0 (",
             "different checkpoints, or init seeds?)");
}

void setup_model(Run& r, const std::string& resume_dir) {
  const TrainConfig& cfg = r.cfg;
  int64_t initialised = 0;
  r.model = starting_model(cfg, resume_dir, &initialised, r.dev);
  if (initialised) r.say(str("base checkpoint: ", initialised, " new TTT/LoRA tensors initialised"));
  r.model->to(cfg.param_dtype == "bfloat16" ? at::kBFloat16 : at::kFloat);
  r.model->to(r.dev);
  r.model->train();
  r.model->transformer->gradient_checkpointing = cfg.gradient_checkpointing;
  if (r.model->depformer) r.model->depformer->gradient_checkpointing = cfg.gradient_checkpointing;
  check_replicas_agree(r);
}

// Parameter groups: base (LoRA / embeddings / everything), TTT weights, gating α; OneCycle for each.
void setup_optimizer(Run& r) {
  const TrainConfig& cfg = r.cfg;
  ParamGroup base{"base", {}, cfg.optim.lr, cfg.optim.weight_decay};
  ParamGroup tw{"ttt", {}, cfg.optim.lr * cfg.model.ttt.weight_lr_multiplier, cfg.optim.weight_decay};
  ParamGroup al{"alpha", {}, cfg.optim.lr * cfg.model.ttt.alpha_lr_multiplier, cfg.alpha_weight_decay};
  for (auto& kv : r.model->named_parameters()) {
    const bool t = trains(cfg, kv.key());
    kv.value().set_requires_grad(t);
    if (!t) continue;
    r.trainable.push_back(kv.value());
    ParamGroup& g = is_alpha(kv.key()) ? al : lm::is_ttt_param(kv.key()) ? tw : base;
    g.params.emplace_back(kv.key(), kv.value());
  }
  for (auto* g : {&base, &tw, &al})
    if (!g->params.empty()) r.groups.push_back(*g);
  MT_CHECK(!r.groups.empty(), cfg.source, ": no trainable parameter");
  const AdamWConfig adam{0.9, 0.95, 1e-8, cfg.optim.fused ? AdamWImpl::kFused : AdamWImpl::kSingleTensor};
  if (r.group) {
    r.dp = std::make_unique<DataParallel>(*r.group, cfg, r.groups, &r.stop_signal);
    r.optim = r.dp->make_optimizer(adam);
  } else {
    r.optim = std::make_unique<AdamW>(r.groups, adam);
  }
  for (const auto& g : r.groups) {
    OneCycle oc;
    oc.max_lr = g.max_lr;
    oc.total_steps = cfg.max_steps;
    oc.pct_start = cfg.optim.pct_start;
    r.sched.push_back(oc);
    int64_t n = 0;
    for (const auto& p : g.params) n += p.second.numel();
    r.say(str("group ", g.name, ": ", g.params.size(), " tensors, ", n, " parameters, max lr ", g.max_lr,
              ", weight decay ", g.weight_decay));
  }
  r.say("schedule: OneCycle (cosine, start max/25, end start/1e4, pct_start " + str(cfg.optim.pct_start) +
        "); beta1 cycles 0.95 -> 0.85 -> 0.95 (PyTorch's cycle_momentum), overriding AdamW's 0.9");
}

// Before step 1: what each rank will hold (the ranks are alike), printed and logged beside the measured
// peaks of metrics.jsonl.
void show_memory_plan(Run& r) {
  const MemoryPlan plan = plan_memory(*r.model, r.cfg, r.opt.dist.world_size);
  r.resident_bytes = plan.weights + plan.gradients + plan.optimizer + plan.ttt_state;
  r.say(format_plan(plan));
  if (!r.leader()) return;
  nlohmann::json j;
  j["kind"] = "memory_plan";
  j["step"] = r.start_step;
  j["world_size"] = plan.world_size;
  j["sharding"] = name(plan.sharding);
  j["bytes"] = {{"weights", plan.weights},
                {"gradients", plan.gradients},
                {"optimizer", plan.optimizer},
                {"ttt_state", plan.ttt_state},
                {"activations", plan.activations},
                {"microbatch_activations", plan.microbatch_activations},
                {"total", plan.total()}};
  j["at"] = now_iso();
  r.metrics << j.dump() << "\n";
}

// The loader, and the stream states carried across each file's chunks when the model has TTT.
void setup_data(Run& r) {
  const TrainConfig& cfg = r.cfg;
  std::vector<TokenFile> files = read_token_index(shared_token_index(r, cfg.train_data, "train"));
  LoaderConfig lc;
  lc.batch_size = cfg.batch_size * cfg.num_microbatches;
  lc.chunk_frames = cfg.chunk_frames();
  lc.shuffle = cfg.shuffle;
  lc.seed = cfg.seed;
  lc.rank = r.opt.dist.rank;
  lc.world_size = r.opt.dist.world_size;
  r.loader = std::make_unique<TokenLoader>(files, lc);
  if (!r.model->transformer->has_addons()) return;
  // pitfalls.md row 11 (sequences too short for TTT to update anything): say so before the run.
  const auto& t = cfg.model.ttt;
  const bool persistent = t.persistent_states;
  if (t.variant == lm::TTTVariant::kInPlace && lc.chunk_frames < t.inplace_chunk_size && !persistent)
    r.say(str("warning: training chunks of ", lc.chunk_frames, " frames are shorter than one In-Place chunk (",
              t.inplace_chunk_size, "): without persistent states no update ever happens"));
  if (t.variant != lm::TTTVariant::kInPlace && lc.chunk_frames < 2 * t.mini_batch_size)
    r.say(str("warning: training chunks of ", lc.chunk_frames, " frames hold fewer than 2 TTT mini-batches (",
              t.mini_batch_size, " frames each)"));
  for (int64_t mb = 0; mb < cfg.num_microbatches; ++mb)
    r.states.push_back(r.model->transformer->make_layer_states(cfg.batch_size));
}

// ---- one step of the loop ---------------------------------------------------------------------
struct StepBatch {
  TokenBatch batch;
  std::vector<at::Tensor> micro, resets;  // per micro-batch: codes on the device, file-start flags
};

StepBatch next_batch(Run& r) {
  const TrainConfig& cfg = r.cfg;
  StepBatch b;
  MT_CHECK(r.loader->next(b.batch), cfg.train_data, ": no training data");
  check_token_range(r.model->cfg, b.batch, cfg.train_data);
  for (int64_t mb = 0; mb < cfg.num_microbatches; ++mb) {
    b.micro.push_back(b.batch.codes.narrow(0, mb * cfg.batch_size, cfg.batch_size).to(r.dev));
    b.resets.push_back(b.batch.reset.narrow(0, mb * cfg.batch_size, cfg.batch_size));
  }
  return b;
}

// What the loop keeps across steps for the log and the summary.
struct Progress {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  int64_t frames_total = 0;
  int64_t tokens_total = 0;          // moshi-finetune's "words": text + audio positions of every batch
  std::vector<int64_t> ttt_updates;  // per transformer layer: TTT updates over the run (this rank)
  bool tty = isatty(2);
};

// Counts the step, and handles a skipped one (non-finite loss or gradient): states may hold the values
// that caused it, so the streams start afresh.
void account(Run& r, const StepResult& sr, int64_t step, Progress& p, TrainSummary& sum) {
  if (p.ttt_updates.size() < sr.ttt_updates.size()) p.ttt_updates.resize(sr.ttt_updates.size(), 0);
  for (size_t l = 0; l < sr.ttt_updates.size(); ++l) p.ttt_updates[l] += sr.ttt_updates[l];
  sum.last_loss = sr.loss;
  sum.steps_done = step + 1;
  if (sr.applied) return;
  ++r.bad_steps;
  ++sum.skipped_steps;
  for (auto& v : r.states)
    for (auto& ls : v) ls.reset();
  r.say(str("step ", step + 1, ": non-finite ", std::isfinite(sr.loss) ? "gradient" : "loss", " (loss ", sr.loss,
            ", grad norm ", sr.grad_norm, "): step skipped (", r.bad_steps, " of at most ", r.cfg.max_bad_steps, ")"));
}

// Too many skipped steps stop the run (after the failing step's record is logged).
void check_bad_steps(const Run& r, int64_t step) {
  MT_CHECK(r.bad_steps <= r.cfg.max_bad_steps, "training stopped: ", r.bad_steps,
           " steps had a non-finite loss or gradient (", "max_bad_steps ", r.cfg.max_bad_steps, "); the last at step ",
           step + 1, ". Lower optim.lr or ttt.base_lr, or check the data");
}

nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

// One "train" record of metrics.jsonl.
nlohmann::json train_record(const Run& r, const StepResult& sr, int64_t step, int64_t frames, double dt,
                            size_t peak_bytes) {
  nlohmann::json j;
  j["kind"] = "train";
  j["step"] = step + 1;
  j["loss"] = num(sr.loss);
  j["text_loss"] = num(sr.text);
  j["audio_loss"] = num(sr.audio);
  j["per_codebook"] = sr.per_codebook;
  nlohmann::json lrs = nlohmann::json::object(), gnorms = nlohmann::json::object();
  for (size_t g = 0; g < r.groups.size(); ++g) {
    lrs[r.groups[g].name] = r.optim->lr(g);
    gnorms[r.groups[g].name] = sr.group_grad_norm[g];
  }
  j["lr"] = lrs;
  j["beta1"] = r.optim->beta1(0);
  j["grad_norm"] = num(sr.grad_norm);
  j["grad_norm_groups"] = gnorms;
  j["skipped"] = !sr.applied;
  if (r.model->transformer->has_addons()) {
    j["alpha_mean_abs_tanh"] = num(mean_over_units(lm::ttt_report(*r.model, {}), &lm::TTTUnitReport::gate, true));
    j["ttt_state_change"] = num(sr.state_change);
  }
  j["real_tokens"] = sr.real_tokens;
  j["frames_per_s"] = static_cast<double>(frames) / dt;
  j["tokens_per_s"] = static_cast<double>(frames * r.model->cfg.num_codebooks()) / dt;
  j["peak_mem_mb"] = static_cast<double>(peak_bytes) / 1e6;
  j["at"] = now_iso();
  return j;
}

// The progress line: a bar, the loss, the lr, the rate and the time left.
void show_progress(const Run& r, const StepResult& sr, int64_t step, int64_t end_step, double frames_per_s,
                   const Progress& p) {
  if (r.opt.quiet) return;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - p.start).count();
  const int64_t done = step + 1 - r.start_step, left = end_step - step - 1;
  const double eta = elapsed / static_cast<double>(done) * static_cast<double>(left);
  char line[256];
  const int width = 24, filled = static_cast<int>(width * (step + 1) / std::max<int64_t>(1, end_step));
  std::string bar(filled, '#');
  bar.resize(width, '.');
  std::snprintf(line, sizeof line, "[%s] step %lld/%lld  loss %.4f  lr %.2e  %.0f frames/s  ETA %s", bar.c_str(),
                (long long)(step + 1), (long long)end_step, sr.loss, r.optim->lr(0), frames_per_s,
                fmt_duration(eta).c_str());
  if (p.tty)
    std::fprintf(stderr, "\r%s\033[K%s", line, step + 1 == end_step ? "\n" : "");
  else
    std::fprintf(stderr, "%s\n", line);
}

// One record of moshi-finetune's metrics.train.jsonl, with its keys and units: memory in GiB as
// torch.cuda.memory_allocated counts it (every live tensor: the resident training state plus what the
// step allocated), wps = text + audio token positions per second.
nlohmann::json finetune_train_record(const Run& r, const StepResult& sr, int64_t step, int64_t frames, double dt,
                                     const PeakMemory& mem, const Progress& p) {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  const int64_t tokens = frames * (1 + r.model->cfg.dep_q);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - p.start).count();
  const double avg_wps = static_cast<double>(p.tokens_total) / std::max(elapsed, 1e-9);
  const int64_t left = r.cfg.max_steps - step - 1;
  nlohmann::json j;
  j["lr"] = r.optim->lr(0);
  j["step"] = step + 1;
  j["loss"] = num(sr.loss);
  j["prob_real_tokens"] = static_cast<double>(sr.real_tokens) / static_cast<double>(std::max<int64_t>(1, tokens));
  j["percent_done"] = 100.0 * static_cast<double>(step + 1) / static_cast<double>(r.cfg.max_steps);
  j["peak_allocated_mem"] = static_cast<double>(r.resident_bytes + std::max<int64_t>(0, mem.peak())) / kGiB;
  j["allocated_mem"] = static_cast<double>(r.resident_bytes + std::max<int64_t>(0, mem.current())) / kGiB;
  j["wps"] = static_cast<double>(tokens) / dt;
  j["avg_wps"] = avg_wps;
  j["eta_in_seconds"] = static_cast<double>(left * tokens) / std::max(avg_wps, 1e-9);
  j["at"] = now_iso();
  return j;
}

void log_step(Run& r, const StepResult& sr, int64_t step, int64_t end_step, int64_t frames, double dt,
              const PeakMemory& mem, const Progress& p) {
  const bool due = (step + 1) % r.cfg.log_freq == 0 || step + 1 == end_step;
  if (!r.leader() || !(due || !sr.applied)) return;
  r.metrics << train_record(r, sr, step, frames, dt, mem.peak()).dump() << "\n";
  r.metrics.flush();
  r.ft_train << finetune_train_record(r, sr, step, frames, dt, mem, p).dump() << "\n";
  r.ft_train.flush();
  show_progress(r, sr, step, end_step, static_cast<double>(frames) / dt, p);
}

void maybe_eval(Run& r, int64_t step, TrainSummary& sum) {
  const TrainConfig& cfg = r.cfg;
  if (!cfg.do_eval || !((cfg.eval_freq > 0 && (step + 1) % cfg.eval_freq == 0) || step + 1 == cfg.max_steps)) return;
  r.model->eval();
  const double ev = evaluate(r);
  r.model->train();
  sum.last_eval_loss = ev;
  if (!r.leader()) return;
  nlohmann::json j;
  j["kind"] = "eval";
  j["step"] = step + 1;
  j["eval_loss"] = num(ev);
  j["perplexity"] = std::isfinite(ev) ? nlohmann::json(std::exp(ev)) : nlohmann::json(nullptr);
  j["at"] = now_iso();
  r.metrics << j.dump() << "\n";
  r.metrics.flush();
  nlohmann::json ft;  // moshi-finetune's metrics.eval.jsonl record
  ft["step"] = step + 1;
  ft["train_loss"] = num(sum.last_loss);
  ft["perplexity"] = j["perplexity"];
  ft["eval_loss"] = num(ev);
  ft["at"] = j["at"];
  r.ft_eval << ft.dump() << "\n";
  r.ft_eval.flush();
  r.say(str("eval at step ", step + 1, ": loss ", ev));
}

// Checkpoints when due, and on SIGINT / SIGTERM (then the run stops: returns true).
bool maybe_checkpoint(Run& r, int64_t step, int64_t end_step, TrainSummary& sum) {
  const TrainConfig& cfg = r.cfg;
  const bool last = step + 1 == end_step;
  const bool saved = cfg.do_ckpt && ((cfg.ckpt_freq > 0 && (step + 1) % cfg.ckpt_freq == 0) || last);
  if (saved) save_checkpoint(r, step + 1);
  const int sig = r.dp ? r.dp->agreed_stop() : g_stop_signal.load();
  if (!sig || last) return false;
  if (!saved) save_checkpoint(r, step + 1);
  r.say(str("stopped by ", sig == SIGINT ? "SIGINT" : "SIGTERM", " after step ", step + 1, "; continue with --resume"));
  sum.stopped_by_signal = sig;
  return true;
}

// pitfalls.md row 11 (sequences too short for TTT to update anything): how many TTT updates each layer
// made, so a run that updated nothing says so instead of looking like TTT.
void summarize_ttt(Run& r, const Progress& p, TrainSummary& sum) {
  const TrainConfig& cfg = r.cfg;
  const auto& layers = r.model->transformer->layer_ptrs;
  std::string line;
  nlohmann::json per = nlohmann::json::object();
  for (size_t l = 0; l < layers.size(); ++l) {
    if (!lm::has_ttt(*layers[l])) continue;
    const int64_t n = l < p.ttt_updates.size() ? p.ttt_updates[l] : 0;
    sum.ttt_updates.push_back({static_cast<int64_t>(l), n});
    per[std::to_string(l)] = n;
    line += str(line.empty() ? "" : ", ", l, ": ", n);
  }
  const bool inplace = cfg.model.ttt.variant == lm::TTTVariant::kInPlace;
  const std::string unit = inplace ? "chunk" : "mini-batch";
  r.say(str("TTT updates per layer (", unit, " updates over all sequences of this rank): ", line));
  for (const auto& [l, n] : sum.ttt_updates)
    if (n == 0 && sum.steps_done > r.start_step)
      r.say(str("warning: TTT layer ", l, " made no update in this run: every token used the initial TTT weights"));
  const double clip = cfg.model.ttt.inplace_delta_clip_fro_norm;
  if (inplace && clip > 0) r.say(str("In-Place ΔW clip on: each chunk update scaled to Frobenius norm <= ", clip));
  if (!r.leader()) return;
  nlohmann::json j;
  j["kind"] = "summary";
  j["step"] = sum.steps_done;
  j["ttt_updates"] = per;
  j["ttt_update_unit"] = unit;
  if (inplace) j["inplace_delta_clip_fro_norm"] = clip;
  j["at"] = now_iso();
  r.metrics << j.dump() << "\n";
}

TrainSummary train_impl(const TrainConfig& cfg, const TrainOptions& opt) {
  StopSignals stop_signals;
  Run r{cfg, opt};
  set_threads(cfg.threads);
  r.dev = training_device(r);
  join_ranks(r);
  for (const auto& n : cfg.notes) r.say("note: " + n);
  const std::string resume_dir = prepare_run_dir(cfg, opt.resume, opt.resume_from, r.leader());
  setup_model(r, resume_dir);
  setup_optimizer(r);
  setup_data(r);
  if (!resume_dir.empty()) {
    restore_checkpoint(r, resume_dir);
    r.say(str("resumed from ", resume_dir, " at step ", r.start_step));
    if (r.leader()) trim_after_resume(cfg.run_dir, r.start_step, [&r](const std::string& s) { r.say(s); });
  }
  if (r.leader()) {
    const std::filesystem::path d(cfg.run_dir);
    r.metrics.open(d / "metrics.jsonl", std::ios::app);
    r.ft_train.open(d / "metrics.train.jsonl", std::ios::app);
    r.ft_eval.open(d / "metrics.eval.jsonl", std::ios::app);
  }
  show_memory_plan(r);

  const LossConfig loss_cfg{cfg.first_codebook_weight_multiplier, cfg.text_padding_weight};
  const bool persistent = r.model->transformer->has_addons() && cfg.model.ttt.persistent_states;
  const int64_t end_step = opt.stop_at_step > 0 ? std::min(opt.stop_at_step, cfg.max_steps) : cfg.max_steps;
  TrainSummary sum;
  sum.run_dir = cfg.run_dir;
  Progress p;
  for (int64_t step = r.start_step; step < end_step; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    PeakMemory mem(r.dev.type());  // tensors allocated during the step on the training device
    const StepBatch b = next_batch(r);
    const bool probes = (step + 1) % cfg.log_freq == 0 || step + 1 == end_step;
    r.stop_signal = g_stop_signal.load();
    const StepResult sr = train_step(*r.model, *r.optim, r.sched, step, b.micro, persistent ? &r.states : nullptr,
                                     b.resets, loss_cfg, cfg.max_norm, probes, r.dp.get());
    account(r, sr, step, p, sum);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t frames = b.batch.codes.size(0) * b.batch.codes.size(2) * opt.dist.world_size;  // all ranks
    p.frames_total += frames;
    p.tokens_total += frames * (1 + r.model->cfg.dep_q);
    sum.tokens_per_s = static_cast<double>(p.frames_total) /
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - p.start).count();
    log_step(r, sr, step, end_step, frames, dt, mem, p);
    check_bad_steps(r, step);
    maybe_eval(r, step, sum);
    if (maybe_checkpoint(r, step, end_step, sum)) break;
  }
  if (r.model->transformer->has_addons()) summarize_ttt(r, p, sum);
  if (r.leader()) {
    r.metrics.close();
    r.ft_train.close();
    r.ft_eval.close();
    write_loss_plot(cfg.run_dir);
  }
  return sum;
}

}  // namespace

TrainSummary run_training(const TrainConfig& cfg, const TrainOptions& opt) {
  // A run that fails before its first step (bad data, bad weights) leaves no run folder behind if it
  // made one; a run folder that existed is left as it was found (its files are only replaced whole).
  const bool made_dir = opt.dist.rank == 0 && !cfg.run_dir.empty() && !fs::exists(cfg.run_dir);
  try {
    return train_impl(cfg, opt);
  } catch (...) {
    std::error_code ec;
    const fs::path m = fs::path(cfg.run_dir) / "metrics.jsonl";
    // The memory plan's record comes before step 1: only a step's record makes the folder a run.
    const bool no_step = !fs::exists(m, ec) || read_metrics(cfg.run_dir, "train").empty();
    if (made_dir && no_step) fs::remove_all(cfg.run_dir, ec);
    throw;
  }
}

}  // namespace mt::train
