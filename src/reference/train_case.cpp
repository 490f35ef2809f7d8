// check-reference for train cases: a few optimizer steps of moshi-finetune on a small LM, float32,
// every parameter trained or (LoRA cases) LoRA on every linear with the base frozen. Per step: text and audio loss of
// each micro-batch, the lr used, the total gradient norm before clipping; the first step's gradients; every parameter
// after the last step.
#include "reference/train_case.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "lm/lm_model.h"
#include "reference/check_reference.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/runtime.h"

namespace fs = std::filesystem;

namespace mt::train {

namespace {

bool is_train_case(const std::string& dir) {
  for (const char* f : {"config.json", "model.safetensors", "batches.safetensors", "out.safetensors", "train.json"})
    if (!fs::exists(fs::path(dir) / f)) return false;
  return true;
}

template <class T>
T field(const nlohmann::json& j, const char* k, const std::string& where) {
  MT_CHECK(j.contains(k), where, ": missing field '", k, "'");
  try {
    return j.at(k).get<T>();
  } catch (const std::exception&) {
    fail(where, ": field '", k, "' has the wrong type");
  }
}

ref::CaseResult run_train_case(const std::string& dir, const ref::RunOptions& opt) {
  ref::CaseResult r;
  const fs::path d(dir);
  const std::string tj = (d / "train.json").string();
  nlohmann::json t;
  {
    std::ifstream in(tj);
    MT_CHECK(in, tj, ": cannot open");
    t = nlohmann::json::parse(in, nullptr, false);
    MT_CHECK(!t.is_discarded(), tj, ": not valid JSON");
  }
  const double lr = field<double>(t, "lr", tj), wd = field<double>(t, "weight_decay", tj);
  const double pct = field<double>(t, "pct_start", tj), max_norm = field<double>(t, "max_norm", tj);
  const int64_t max_steps = field<int64_t>(t, "max_steps", tj), steps = field<int64_t>(t, "steps", tj);
  const int64_t M = field<int64_t>(t, "num_microbatches", tj);
  LossConfig lc{field<double>(t, "first_codebook_weight_multiplier", tj), field<double>(t, "text_padding_weight", tj)};

  c10::Device dev = parse_device(opt.device);
  lm::LMConfig cfg = lm::LMConfig::from_file((d / "config.json").string());
  // LoRA cases (moshi-finetune's full_finetuning: false): every linear gets an adapter whose initial
  // values come from lora.safetensors, and only the adapters (and the embeddings with ft_embed) train.
  const bool full = t.value("full_finetuning", true);
  lm::LoRAConfig lora;
  if (!full) {
    const auto lj = field<nlohmann::json>(t, "lora", tj);
    lora.enable = field<bool>(lj, "enable", tj + ": lora");
    lora.rank = field<int64_t>(lj, "rank", tj + ": lora");
    lora.scaling = field<double>(lj, "scaling", tj + ": lora");
    lora.ft_embed = field<bool>(lj, "ft_embed", tj + ": lora");
    MT_CHECK(lora.enable, tj, ": full_finetuning is false but lora.enable is not true");
  }
  lm::LMModel model = lm::load_lm(cfg, (d / "model.safetensors").string(), at::kFloat, {}, nullptr, lora,
                                  full ? "" : (d / "lora.safetensors").string());
  model->to(dev);
  model->train();
  ParamGroup g{"base", {}, lr, wd};
  std::vector<at::Tensor> trainable;
  std::vector<std::pair<std::string, at::Tensor>> frozen;
  for (auto& kv : model->named_parameters()) {
    const std::string& n = kv.key();
    const bool train = trains(full, lora, n);
    kv.value().set_requires_grad(train);
    if (!train) {
      frozen.emplace_back(n, kv.value());
      continue;
    }
    g.params.emplace_back(n, kv.value());
    trainable.push_back(kv.value());
  }
  AdamW optim({g}, AdamWConfig{0.9, 0.95, 1e-8});
  OneCycle oc;
  oc.max_lr = lr;
  oc.total_steps = max_steps;
  oc.pct_start = pct;
  const std::vector<OneCycle> sched{oc};

  io::SafeTensors bf((d / "batches.safetensors").string()), of((d / "out.safetensors").string());
  at::Tensor codes = bf.get("codes");  // [steps, M, B, K, T]
  MT_CHECK(codes.dim() == 5 && codes.size(0) >= steps && codes.size(1) == M, dir, ": batches codes: expected [", steps,
           ", ", M, ", B, K, T], got ", shape_str(codes.sizes().vec()));
  at::Tensor text_loss = at::zeros({steps, M}, at::kDouble), audio_loss = at::zeros({steps, M}, at::kDouble);
  at::Tensor lrs = at::zeros({steps}, at::kDouble), norms = at::zeros({steps}, at::kDouble);
  std::map<std::string, at::Tensor> first_grads;
  for (int64_t s = 0; s < steps; ++s) {
    std::vector<at::Tensor> micro;
    for (int64_t m = 0; m < M; ++m) micro.push_back(codes[s][m].to(dev));
    struct Capture : StepHooks {  // step 1's gradients, before clipping
      const ParamGroup* g = nullptr;
      std::map<std::string, at::Tensor>* out = nullptr;
      void after_backward(StepResult&) override {
        for (const auto& [n, p] : g->params)
          (*out)[n] = p.grad().defined() ? p.grad().detach().cpu().clone() : at::zeros_like(p).cpu();
      }
    } capture;
    capture.g = &g;
    capture.out = &first_grads;
    StepResult sr = train_step(*model, optim, sched, s, micro, nullptr, {}, lc, max_norm, false,
                               s == 0 ? &capture : nullptr);
    for (int64_t m = 0; m < M; ++m) {
      text_loss[s][m] = sr.text_loss[m];
      audio_loss[s][m] = sr.audio_loss[m];
    }
    lrs[s] = sr.lr[0];
    norms[s] = sr.grad_norm;
  }
  const std::string fp32 = "fp32 forward/backward; our matmuls sum in another order than PyTorch's";
  r.checks.push_back(ref::compare("text_loss", text_loss, of.get("text_loss").narrow(0, 0, steps), 1e-5, 1e-5, fp32));
  r.checks.push_back(
      ref::compare("audio_loss", audio_loss, of.get("audio_loss").narrow(0, 0, steps), 1e-5, 1e-5, fp32));
  r.checks.push_back(ref::compare("lr", lrs, of.get("lr").narrow(0, 0, steps), 0, 1e-7,
                                  "OneCycle is closed-form; the file stores it as float32"));
  r.checks.push_back(ref::compare("grad_norm", norms, of.get("grad_norm").narrow(0, 0, steps), 1e-6, 1e-4, fp32));
  // A tensor the case lacks is a failure named after it.
  auto present = [&](const std::string& key) {
    if (of.contains(key)) return true;
    r.checks.push_back(ref::failed_check(key, "not in out.safetensors"));
    return false;
  };
  for (const auto& [n, gr] : first_grads) {
    const std::string key = "grad." + n;
    if (!present(key)) continue;
    r.checks.push_back(ref::compare(key, gr, of.get(key), 2e-6, 1e-4, fp32 + " (gradients of the first step)"));
  }
  // Adam divides by sqrt(v): a gradient that is only rounding noise still moves a weight (up to lr/100
  // per the case's README), so final weights get an absolute tolerance of lr/100.
  for (const auto& [n, p] : g.params) {
    const std::string key = "final." + n;
    if (!present(key)) continue;
    // The cases are made on a CPU. On another device the summation order differs more, and a gradient
    // that is pure rounding noise can change sign there: Adam turns each such element into a step of up
    // to lr, so the bound becomes 2·lr per step (measured on an H200: 8.9e-4 after 4 steps at lr 3e-3).
    const bool cpu = dev.is_cpu();
    r.checks.push_back(
        ref::compare(key, p.detach().cpu(), of.get(key), cpu ? lr / 100 : 2 * lr * static_cast<double>(steps), 1e-4,
                     cpu ? "after the last step; Adam amplifies rounding noise on near-zero gradients"
                         : "after the last step, on a GPU: noise-level gradients may flip sign (2 lr per step)"));
  }
  // The frozen base of a LoRA run must come out unchanged to the bit.
  for (const auto& [n, p] : frozen) {
    const std::string key = "final." + n;
    if (!present(key)) continue;
    r.checks.push_back(ref::compare_exact(key, p.detach().cpu(), of.get(key), "frozen: never updated"));
  }
  return r;
}

}  // namespace

}  // namespace mt::train

namespace mt::ref {
void register_train_case() { register_kind("train", train::is_train_case, train::run_train_case); }
}  // namespace mt::ref
