// The LM on CUDA equals the CPU (TF32 off); greedy generation on the GPU gives the reference tokens.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "lm/lm_gen.h"
#include "lm/lm_model.h"
#include "reference/check_reference.h"
#include "test_util.h"
#include "util/runtime.h"

using namespace mt;
using namespace mt::lm;

TEST(LMGpu, ReferenceCasesPassOnCuda) {
  REQUIRE_CUDA();
  ref::register_builtin_kinds();
  for (const char* name : {"kyutai_test_lm", "lm_small_stream"}) {
    ref::CaseResult r = ref::run_case(test::reference_dir() + "/lm/" + name, {"cuda", false});
    EXPECT_TRUE(r.pass()) << name << ": worst " << r.worst()->name << " " << r.worst()->worst_ratio;
  }
}

TEST(LMGpu, ForwardMatchesCpuAndSampledGenerationRuns) {
  REQUIRE_CUDA();
  LMConfig c = LMConfig::tiny();
  LMModel cpu(c);
  cpu->init_weights(3);
  LMModel gpu(c);
  gpu->init_weights(3);
  gpu->to(at::kCUDA);
  at::InferenceMode im;
  at::Tensor codes = at::randint(c.card, {2, c.num_codebooks(), 24}, at::kLong);
  codes.select(1, 0).random_(0, c.text_card);
  LMOutput a = cpu->forward(codes), b = gpu->forward(codes.cuda());
  at::Tensor m = a.mask.unsqueeze(-1);
  // fp32 without TF32: cuBLAS and MKL differ only in summation order.
  EXPECT_LT((a.logits - b.logits.cpu()).abs().masked_select(m).max().item<double>(), 1e-4);
  LMGen gen(gpu, SamplingConfig{});
  LMGenState st = gen.make_state(2);
  auto res = generate(gen, st, 20, {});
  EXPECT_EQ(res.tokens.size(2), 20 - c.max_delay());
  EXPECT_TRUE((res.tokens.narrow(1, 1, c.dep_q) < c.card).all().item<bool>());
}
