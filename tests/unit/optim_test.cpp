// Tests of the optimisation step (src/train/optim.{h,cpp}): AdamW + OneCycleLR + clip_grad_norm_
// replayed against a run of PyTorch itself (tests/data/optim_case.safetensors, made by
// scripts/reference/make_optim_case.py), the lr ratio between groups, float32 master weights for
// bf16 parameters, bit-identical resumption from state_dict, strict loading, gradient clipping.
#include "train/optim.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "test_util.h"
#include "util/error.h"

using mt::train::AdamW;
using mt::train::AdamWConfig;
using mt::train::OneCycle;
using mt::train::ParamGroup;

namespace {

at::Tensor leaf(const at::Tensor& values) { return values.detach().clone().set_requires_grad(true); }

// Runs `fn` and returns the mt::Error message (fails the test if nothing or something else is thrown).
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const mt::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected mt::Error, got: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected mt::Error, nothing thrown";
  return {};
}

double rel_diff(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); }

// ---- replay of the PyTorch reference case ----------------------------------------------------------

std::string case_path() { return std::string(MT_SOURCE_DIR) + "/tests/data/optim_case.safetensors"; }

struct Deviation {
  double lr = 0, beta1 = 0, norm = 0, param = 0;  // worst relative / relative / relative / absolute
  int steps = 0, clipped = 0;
};

// Replays the reference run with our optimizer; `beta2` (and `wd`) default to the reference's, the
// failure test passes other values to show the comparison has teeth.
Deviation replay(double beta2 = 0.95, double wd = 0.1,
                 mt::train::AdamWImpl impl = mt::train::AdamWImpl::kSingleTensor) {
  mt::io::SafeTensors f(case_path());
  const std::vector<std::pair<std::string, int>> names = {{"a", 0}, {"b", 0}, {"c", 1}};
  const double max_lrs[2] = {3e-3, 3e-2};
  std::map<std::string, at::Tensor> params;
  std::vector<ParamGroup> groups(2);
  std::vector<at::Tensor> all;
  for (int g = 0; g < 2; ++g) {
    groups[g].name = g == 0 ? "g0" : "g1";
    groups[g].max_lr = max_lrs[g];
    groups[g].weight_decay = wd;
  }
  for (const auto& [n, g] : names) {
    params[n] = leaf(f.get("init." + n));
    groups[g].params.emplace_back(n, params[n]);
    all.push_back(params[n]);
  }
  AdamW opt(groups, AdamWConfig{0.9, beta2, 1e-8, impl});
  std::vector<OneCycle> sched(2);
  for (int g = 0; g < 2; ++g) {
    sched[g].max_lr = max_lrs[g];
    sched[g].total_steps = 7;
    sched[g].pct_start = 0.25;
  }
  at::Tensor lr = f.get("lr"), beta1 = f.get("beta1"), norm = f.get("norm"), clipped = f.get("clipped");
  Deviation d;
  d.steps = static_cast<int>(norm.size(0));
  for (int64_t k = 0; k < norm.size(0); ++k) {
    for (int g = 0; g < 2; ++g) {
      opt.set_lr(g, sched[g].lr_at(k));
      opt.set_beta1(g, sched[g].momentum_at(k));
      d.lr = std::max(d.lr, rel_diff(opt.lr(g), lr[k][g].item<double>()));
      d.beta1 = std::max(d.beta1, rel_diff(opt.beta1(g), beta1[k][g].item<double>()));
    }
    for (const auto& [n, g] : names) params[n].mutable_grad() = f.get("grad." + std::to_string(k) + "." + n);
    double total = mt::train::clip_grad_norm(all, 0.5);
    d.norm = std::max(d.norm, rel_diff(total, norm[k].item<double>()));
    d.clipped += clipped[k].item<int64_t>() != 0;
    opt.step();
    for (const auto& [n, g] : names)
      d.param = std::max(d.param, mt::test::max_abs_diff(params[n], f.get("param." + std::to_string(k) + "." + n)));
  }
  return d;
}

TEST(OptimReference, MatchesPyTorchAdamWOneCycleClip) {
  Deviation d = replay();
  ASSERT_EQ(d.steps, 6);
  EXPECT_GT(d.clipped, 0) << "the case must exercise clipping";
  EXPECT_LT(d.clipped, d.steps) << "and steps without it";
  EXPECT_LE(d.lr, 1e-12);
  EXPECT_LE(d.beta1, 1e-12);
  EXPECT_LE(d.norm, 1e-6);
  EXPECT_LE(d.param, 1e-6);
  RecordProperty("max_lr_rel_diff", mt::str(d.lr));
  RecordProperty("max_norm_rel_diff", mt::str(d.norm));
  RecordProperty("max_param_abs_diff", mt::str(d.param));
}

// PyTorch's fused kernel (the default) on the same case: the same formula in one pass, so within
// float32 rounding of the single-tensor run, and wrong hyper-parameters still show.
TEST(OptimReference, FusedMatchesPyTorchAdamWOneCycleClip) {
  Deviation d = replay(0.95, 0.1, mt::train::AdamWImpl::kFused);
  ASSERT_EQ(d.steps, 6);
  EXPECT_LE(d.norm, 1e-6);
  EXPECT_LE(d.param, 1e-6);
  RecordProperty("max_param_abs_diff", mt::str(d.param));
  EXPECT_GT(replay(0.999, 0.1, mt::train::AdamWImpl::kFused).param, 1e-5);
  EXPECT_GT(replay(0.95, 0.0, mt::train::AdamWImpl::kFused).param, 1e-6);
}

// The comparison above can fail: a wrong beta2 or weight decay moves the parameters well past 1e-6.
TEST(OptimReference, ComparisonDetectsWrongHyperParameters) {
  Deviation wrong_beta2 = replay(0.999);
  EXPECT_GT(wrong_beta2.param, 1e-5) << "beta2 0.999 instead of 0.95 went unnoticed";
  Deviation wrong_wd = replay(0.95, 0.0);
  EXPECT_GT(wrong_wd.param, 1e-6) << "weight decay 0 instead of 0.1 went unnoticed";
  RecordProperty("wrong_beta2_param_abs_diff", mt::str(wrong_beta2.param));
  RecordProperty("wrong_wd_param_abs_diff", mt::str(wrong_wd.param));
  // The schedule and the clipping do not depend on them.
  EXPECT_LE(wrong_beta2.lr, 1e-12);
  EXPECT_LE(wrong_beta2.norm, 1e-6);
}

// ---- OneCycle ------------------------------------------------------------------------------------

TEST(OneCycle, EndpointsAndMomentum) {
  OneCycle s;
  s.max_lr = 1e-3;
  s.total_steps = 100;
  s.pct_start = 0.3;
  EXPECT_NEAR(s.lr_at(0), 1e-3 / 25, 1e-18);
  EXPECT_NEAR(s.momentum_at(0), 0.95, 1e-15);
  // Phase 1 ends at step pct_start * total_steps - 1 = 29: the peak lr and the lowest momentum.
  EXPECT_NEAR(s.lr_at(29), 1e-3, 1e-15);
  EXPECT_NEAR(s.momentum_at(29), 0.85, 1e-15);
  EXPECT_NEAR(s.lr_at(99), 1e-3 / 25 / 1e4, 1e-18);
  EXPECT_NEAR(s.momentum_at(99), 0.95, 1e-15);
  for (int64_t k = 1; k < 100; ++k) {
    if (k <= 29)
      EXPECT_GT(s.lr_at(k), s.lr_at(k - 1)) << k;
    else
      EXPECT_LT(s.lr_at(k), s.lr_at(k - 1)) << k;
  }
  EXPECT_NO_THROW(s.lr_at(100));  // PyTorch still computes step == total_steps
  EXPECT_NE(error_of([&] { s.lr_at(101); }).find("101"), std::string::npos);
  EXPECT_NE(error_of([&] { s.lr_at(-1); }).find("-1"), std::string::npos);
  s.cycle_momentum = false;
  EXPECT_TRUE(std::isnan(s.momentum_at(5)));  // documented: no momentum schedule
  // pct_start * total_steps == 1 gives phase 1 zero length: PyTorch divides by zero at step 0.
  OneCycle z;
  z.total_steps = 10;
  z.pct_start = 0.1;
  EXPECT_NE(error_of([&] { z.lr_at(0); }).find("zero length"), std::string::npos);
  EXPECT_NO_THROW(z.lr_at(1));
}

// Issue requirement: groups with lr multipliers keep their ratio at every step of the schedule, and
// the optimizer uses exactly those values.
TEST(OneCycle, GroupLrRatioKeptEveryStep) {
  const double base = 2e-5;
  std::vector<ParamGroup> groups(3);
  const double mult[3] = {1, 10, 100};
  std::vector<OneCycle> sched(3);
  for (int g = 0; g < 3; ++g) {
    groups[g].name = "g" + std::to_string(g);
    groups[g].max_lr = base * mult[g];
    groups[g].params.emplace_back("p" + std::to_string(g), leaf(at::randn({3})));
    sched[g].max_lr = groups[g].max_lr;
    sched[g].total_steps = 37;
    sched[g].pct_start = 0.3;
  }
  AdamW opt(groups);
  for (int64_t k = 0; k < 37; ++k) {
    for (int g = 0; g < 3; ++g) {
      opt.set_lr(g, sched[g].lr_at(k));
      opt.set_beta1(g, sched[g].momentum_at(k));
      groups[g].params[0].second.mutable_grad() = at::randn({3});
    }
    EXPECT_NEAR(opt.lr(1) / opt.lr(0), 10.0, 1e-12) << "step " << k;
    EXPECT_NEAR(opt.lr(2) / opt.lr(0), 100.0, 1e-12) << "step " << k;
    EXPECT_EQ(opt.beta1(1), opt.beta1(0));
    EXPECT_EQ(opt.beta1(2), opt.beta1(0));
    opt.step();
  }
  EXPECT_EQ(opt.steps_taken(), 37);
}

// ---- bf16 master weights -------------------------------------------------------------------------

TEST(AdamWBf16, MasterStaysFp32AndMatchesFp32Run) {
  at::manual_seed(3);
  at::Tensor init = at::randn({6, 5}).to(at::kBFloat16);
  at::Tensor pb = leaf(init), pf = leaf(init.to(at::kFloat));
  AdamW ob({{"base", {{"w", pb}}, 1e-2, 0.1}});
  AdamW of({{"base", {{"w", pf}}, 1e-2, 0.1}});
  for (int k = 0; k < 20; ++k) {
    at::Tensor g = at::randn({6, 5}).to(at::kBFloat16);
    pb.mutable_grad() = g;
    pf.mutable_grad() = g;  // bf16 gradient on an fp32 parameter: converted by the optimizer
    ob.set_lr(0, 1e-2 * (k + 1) / 20.0);
    of.set_lr(0, 1e-2 * (k + 1) / 20.0);
    ob.step();
    of.step();
  }
  auto sd = ob.state_dict();
  ASSERT_TRUE(sd.count("w.master"));
  at::Tensor master = sd.at("w.master");
  EXPECT_EQ(master.scalar_type(), at::kFloat);
  EXPECT_EQ(sd.at("w.exp_avg").scalar_type(), at::kFloat);
  EXPECT_EQ(sd.at("w.exp_avg_sq").scalar_type(), at::kFloat);
  EXPECT_EQ(pb.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(pb, master.to(at::kBFloat16)));
  EXPECT_LE(mt::test::max_abs_diff(master, pf), 1e-6);
  // The master carries what bf16 cannot: 20 small updates would mostly round away in bf16 alone.
  EXPECT_GT(mt::test::max_abs_diff(master, pb), 0.0);
  // fp32 parameters have no master and keep their states in their own dtype.
  auto sf = of.state_dict();
  EXPECT_FALSE(sf.count("w.master"));
  EXPECT_EQ(sf.at("w.exp_avg").scalar_type(), at::kFloat);
}

// Weights written into the model after the optimizer was built (checkpoint load) are what the first
// step starts from, not the values seen at construction.
TEST(AdamWBf16, FirstStepStartsFromCurrentWeights) {
  at::Tensor p = leaf(at::zeros({4}, at::kBFloat16));
  AdamW opt({{"base", {{"w", p}}, 1e-3, 0.0}});
  {
    at::NoGradGuard ng;
    p.copy_(at::full({4}, 2.5));
  }
  EXPECT_TRUE(at::equal(opt.state_dict().at("w.master"), at::full({4}, 2.5)));
  opt.set_lr(0, 0.0);
  p.mutable_grad() = at::ones({4}, at::kBFloat16);
  opt.step();
  EXPECT_TRUE(at::equal(p, at::full({4}, 2.5, at::kBFloat16)));
}

// ---- state_dict ----------------------------------------------------------------------------------

struct Rig {
  std::vector<at::Tensor> params;
  std::vector<ParamGroup> groups;
};

// Two groups, fp32 and bf16 parameters (so masters are part of the state).
Rig make_rig(const std::vector<at::Tensor>& values) {
  Rig r;
  for (const auto& v : values) r.params.push_back(leaf(v));
  r.groups = {{"base", {{"x", r.params[0]}, {"y", r.params[1]}}, 1e-2, 0.1}, {"ttt", {{"z", r.params[2]}}, 1e-1, 0.0}};
  return r;
}

void run_steps(AdamW& opt, Rig& r, int64_t from, int64_t to) {
  std::vector<OneCycle> sched(2);
  for (int g = 0; g < 2; ++g) {
    sched[g].max_lr = r.groups[g].max_lr;
    sched[g].total_steps = 6;
    sched[g].pct_start = 0.4;
  }
  for (int64_t k = from; k < to; ++k) {
    at::manual_seed(100 + k);  // the same gradients for every rig at step k
    for (auto& p : r.params) p.mutable_grad() = at::randn(p.sizes()).to(p.scalar_type());
    mt::train::clip_grad_norm(r.params, 1.0);
    for (int g = 0; g < 2; ++g) {
      opt.set_lr(g, sched[g].lr_at(k));
      opt.set_beta1(g, sched[g].momentum_at(k));
    }
    opt.step();
    opt.zero_grad();
  }
}

TEST(AdamWState, RoundTripContinuesBitIdentically) {
  at::manual_seed(7);
  std::vector<at::Tensor> init = {at::randn({3, 4}), at::randn({5}).to(at::kBFloat16),
                                  at::randn({2, 2}).to(at::kBFloat16)};
  Rig a = make_rig(init);
  AdamW oa(a.groups);
  run_steps(oa, a, 0, 3);

  // Through a file, as a checkpoint would go.
  mt::test::TempDir dir;
  mt::io::save(dir.file("opt.safetensors"), oa.state_dict());
  auto loaded = mt::io::load_all(dir.file("opt.safetensors"));

  std::vector<at::Tensor> now;
  for (auto& p : a.params) now.push_back(p.detach().clone());
  Rig b = make_rig(now);
  AdamW ob(b.groups);
  ob.load_state_dict(loaded);
  EXPECT_EQ(ob.steps_taken(), 3);
  for (size_t g = 0; g < 2; ++g) {
    EXPECT_EQ(ob.lr(g), oa.lr(g));
    EXPECT_EQ(ob.beta1(g), oa.beta1(g));
  }
  run_steps(oa, a, 3, 6);
  run_steps(ob, b, 3, 6);
  for (size_t i = 0; i < a.params.size(); ++i) EXPECT_TRUE(at::equal(a.params[i], b.params[i])) << i;
  auto sa = oa.state_dict(), sb = ob.state_dict();
  ASSERT_EQ(sa.size(), sb.size());
  for (const auto& [k, t] : sa) EXPECT_TRUE(at::equal(t, sb.at(k))) << k;
}

TEST(AdamWState, FreshStateLoadsIntoFreshOptimizer) {
  Rig a = make_rig({at::ones({3, 4}), at::ones({5}, at::kBFloat16), at::ones({2, 2}, at::kBFloat16)});
  Rig b = make_rig({at::ones({3, 4}), at::ones({5}, at::kBFloat16), at::ones({2, 2}, at::kBFloat16)});
  AdamW oa(a.groups), ob(b.groups);
  auto sd = oa.state_dict();
  EXPECT_EQ(sd.at("step").item<int64_t>(), 0);
  EXPECT_EQ(sd.size(), 1u + 2 * 2 + 3 * 2 + 2);  // step, lr/beta1 per group, states, two masters
  EXPECT_NO_THROW(ob.load_state_dict(sd));
  EXPECT_EQ(ob.steps_taken(), 0);
}

TEST(AdamWState, StrictLoadNamesTheEntry) {
  Rig a = make_rig({at::ones({3, 4}), at::ones({5}, at::kBFloat16), at::ones({2, 2}, at::kBFloat16)});
  AdamW opt(a.groups);
  run_steps(opt, a, 0, 1);
  const auto good = opt.state_dict();
  std::map<std::string, at::Tensor> copy;
  for (const auto& [k, t] : good) copy[k] = t.clone();

  auto without = [&](const std::string& key) {
    auto s = copy;
    s.erase(key);
    return s;
  };
  for (const std::string key : {"x.exp_avg", "y.exp_avg_sq", "z.master", "step", "group.1.lr"}) {
    std::string msg = error_of([&] { opt.load_state_dict(without(key)); });
    EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'" + key + "'"), std::string::npos) << msg;
  }
  auto extra = copy;
  extra["q.exp_avg"] = at::zeros({1});
  std::string msg = error_of([&] { opt.load_state_dict(extra); });
  EXPECT_NE(msg.find("unexpected entry 'q.exp_avg'"), std::string::npos) << msg;

  auto bad_shape = copy;
  bad_shape["y.exp_avg_sq"] = at::zeros({6});
  msg = error_of([&] { opt.load_state_dict(bad_shape); });
  EXPECT_NE(msg.find("'y.exp_avg_sq'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[6]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[5]"), std::string::npos) << msg;

  // A failed load changes nothing; a good one still works afterwards.
  bad_shape["step"] = at::scalar_tensor(int64_t{99}, at::kLong);
  EXPECT_FALSE(error_of([&] { opt.load_state_dict(bad_shape); }).empty());
  EXPECT_EQ(opt.steps_taken(), 1);
  EXPECT_NO_THROW(opt.load_state_dict(copy));
}

// ---- constructor checks --------------------------------------------------------------------------

TEST(AdamWCtor, RejectsBadParametersByName) {
  at::Tensor p = leaf(at::ones({2}));
  std::string msg = error_of([&] { AdamW({{"base", {{"frozen.w", at::ones({2})}}}}); });
  EXPECT_NE(msg.find("frozen.w"), std::string::npos) << msg;
  EXPECT_NE(msg.find("require"), std::string::npos) << msg;
  msg = error_of([&] { AdamW({{"base", {{"dup", p}}}, {"ttt", {{"dup", leaf(at::ones({2}))}}}}); });
  EXPECT_NE(msg.find("'dup'"), std::string::npos) << msg;
  msg = error_of([&] { AdamW({{"base", {{"u", at::Tensor()}}}}); });
  EXPECT_NE(msg.find("'u'"), std::string::npos) << msg;
  msg = error_of([&] { AdamW({{"base", {{"p1", p}, {"p2", p}}}}); });
  EXPECT_NE(msg.find("'p2'"), std::string::npos) << msg;
  AdamW ok({{"base", {{"p", p}}}});
  EXPECT_FALSE(error_of([&] { ok.set_beta1(0, std::numeric_limits<double>::quiet_NaN()); }).empty());
  EXPECT_FALSE(error_of([&] { ok.set_lr(1, 1e-3); }).empty());
}

// ---- step without gradients ----------------------------------------------------------------------

TEST(AdamWStep, SkipsParametersWithoutGrad) {
  at::Tensor with = leaf(at::full({3}, 1.0)), without = leaf(at::full({3}, 1.0));
  AdamW opt({{"base", {{"with", with}, {"without", without}}, 1e-2, 0.1}});
  opt.set_lr(0, 1e-2);
  with.mutable_grad() = at::tensor({2.0f, -3.0f, 0.5f});
  opt.step();
  // Untouched, not even by weight decay, and its state stays zero.
  EXPECT_TRUE(at::equal(without, at::full({3}, 1.0)));
  EXPECT_TRUE(at::equal(opt.state_dict().at("without.exp_avg"), at::zeros({3})));
  // First step by hand: decay, then m̂/sqrt(v̂) = g/|g| (up to eps), so p = 1·(1 − lr·wd) − lr·sign(g).
  at::Tensor expect = at::full({3}, 1.0 * (1.0 - 1e-2 * 0.1)) - 1e-2 * at::tensor({1.0f, -1.0f, 1.0f});
  EXPECT_LE(mt::test::max_abs_diff(with, expect), 1e-6);
  opt.zero_grad();
  EXPECT_FALSE(with.grad().defined());
  at::Tensor before = with.detach().clone();
  opt.step();  // nothing has a gradient: nothing moves, the count still advances
  EXPECT_TRUE(at::equal(with, before));
  EXPECT_EQ(opt.steps_taken(), 2);
  // A gradient of the wrong shape is refused before anything moves, naming the parameter.
  with.mutable_grad() = at::ones({3});
  without.mutable_grad() = at::ones({4});
  EXPECT_NE(error_of([&] { opt.step(); }).find("'without'"), std::string::npos);
  EXPECT_TRUE(at::equal(with, before));
  EXPECT_EQ(opt.steps_taken(), 2);
}

// ---- clip_grad_norm ------------------------------------------------------------------------------

TEST(ClipGradNorm, MatchesHandComputation) {
  at::Tensor a = leaf(at::zeros({2})), b = leaf(at::zeros({1})), none = leaf(at::zeros({4}));
  auto set = [&] {
    a.mutable_grad() = at::tensor({3.0f, 4.0f});  // norm 5
    b.mutable_grad() = at::tensor({12.0f});       // norm 12 → total 13
  };
  set();
  EXPECT_DOUBLE_EQ(mt::train::grad_norm({a, b, none}), 13.0);
  EXPECT_DOUBLE_EQ(mt::train::grad_norm({a}), 5.0);
  EXPECT_EQ(mt::train::grad_norm({none}), 0.0);
  double n = mt::train::clip_grad_norm({a, b, none}, 6.5);
  EXPECT_DOUBLE_EQ(n, 13.0);
  const double coef = 6.5 / (13.0 + 1e-6);
  EXPECT_NEAR(a.grad()[0].item<double>(), 3.0 * coef, 1e-6);
  EXPECT_NEAR(a.grad()[1].item<double>(), 4.0 * coef, 1e-6);
  EXPECT_NEAR(b.grad()[0].item<double>(), 12.0 * coef, 1e-6);
  EXPECT_FALSE(none.grad().defined());
  EXPECT_NEAR(mt::train::grad_norm({a, b}), 6.5, 1e-5);

  set();  // below the threshold, and max_norm <= 0: the norm is reported, nothing is scaled
  EXPECT_DOUBLE_EQ(mt::train::clip_grad_norm({a, b}, 20.0), 13.0);
  EXPECT_DOUBLE_EQ(mt::train::clip_grad_norm({a, b}, 0.0), 13.0);
  EXPECT_TRUE(at::equal(a.grad(), at::tensor({3.0f, 4.0f})));
  EXPECT_TRUE(at::equal(b.grad(), at::tensor({12.0f})));

  // bf16 gradients are reduced in float32: sqrt(2) is not rounded to bf16's 1.4140625.
  at::Tensor h = leaf(at::zeros({2}, at::kBFloat16));
  h.mutable_grad() = at::ones({2}, at::kBFloat16);
  EXPECT_NEAR(mt::train::clip_grad_norm({h}, 100.0), std::sqrt(2.0), 1e-7);
}

TEST(ClipGradNorm, NonFiniteNormLeavesGradsUntouched) {
  at::Tensor a = leaf(at::zeros({2})), b = leaf(at::zeros({2}));
  for (float bad : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    a.mutable_grad() = at::tensor({bad, 1.0f});
    b.mutable_grad() = at::tensor({30.0f, 40.0f});
    double n = mt::train::clip_grad_norm({a, b}, 1.0);
    EXPECT_FALSE(std::isfinite(n));
    EXPECT_EQ(std::isnan(n), std::isnan(bad));
    EXPECT_TRUE(at::equal(b.grad(), at::tensor({30.0f, 40.0f})));
    EXPECT_EQ(a.grad()[1].item<float>(), 1.0f);
  }
}

}  // namespace
