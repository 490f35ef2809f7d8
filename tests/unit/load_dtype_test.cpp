// Loading base weights in bf16 builds the model in bf16 from the start (no float32 copy of every
// weight on the way, 30.8 GB for Moshi 7B): the result must equal the float32 build cast to bf16,
// including the TTT and LoRA tensors the file lacks, which keep their initial values.
#include <gtest/gtest.h>

#include <c10/core/DefaultDtype.h>

#include "io/safetensors.h"
#include "lm/lm_model.h"
#include "lm_test_util.h"
#include "test_util.h"

namespace {

TEST(LoadDtype, Bf16LoadEqualsTheFloat32BuildCastToBf16) {
  mt::test::TempDir d;
  const mt::lm::LMConfig cfg = mt::test::tiny_lm();
  // A base checkpoint (no TTT, no LoRA tensors), as Kyutai's files are.
  std::vector<std::pair<std::string, at::Tensor>> base;
  {
    mt::lm::LMModel b(cfg);
    b->init_weights(3);
    for (const auto& kv : b->named_parameters()) base.emplace_back(kv.key(), kv.value().detach().to(at::kBFloat16));
  }
  const std::string path = d.file("base.safetensors");
  mt::io::save(path, base);
  const auto ttt = mt::test::ttt_yaml("variant: hybrid\ntype: linear\nmini_batch_size: 4\n");
  mt::lm::LoRAConfig lora;
  lora.enable = true;
  lora.rank = 4;
  // The old way: built in float32, cast, then loaded.
  mt::lm::LMModel want(cfg, ttt, lora);
  want->to(at::kBFloat16);
  want->load(mt::io::SafeTensors(path));
  int64_t initialised = 0;
  mt::lm::LMModel got = mt::lm::load_lm(cfg, path, at::kBFloat16, ttt, &initialised, lora);
  EXPECT_GT(initialised, 0) << "the TTT / LoRA tensors are not in the file";
  EXPECT_EQ(c10::get_default_dtype_as_scalartype(), at::kFloat) << "the default dtype is restored";
  auto a = want->named_parameters(), b = got->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& kv : a) {
    const at::Tensor& g = b[kv.key()];
    EXPECT_EQ(g.scalar_type(), at::kBFloat16) << kv.key();
    EXPECT_TRUE(at::equal(g, kv.value())) << kv.key();
  }
}

}  // namespace
