// Loading base weights in bf16 builds the model in bf16 from the start (no float32 copy of every
// weight on the way, 30.8 GB for Moshi 7B): the result must equal the float32 build cast to bf16,
// including the TTT and LoRA tensors the file lacks, which keep their initial values.
#include <gtest/gtest.h>

#include <c10/core/DefaultDtype.h>
#include <unistd.h>

#include <fstream>

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

// Loading onto another device goes from the mapped file to the device: the model is first built on the
// host without writing its weights, so the kernel never backs their pages. Seen here as resident memory
// that hardly grows while the small preset (~10^8 parameters, ~200 MB in bf16) is built.
TEST(LoadDtype, BuildingTheModelLeavesItsHostPagesUntouched) {
  auto resident = [] {
    std::ifstream f("/proc/self/statm");
    int64_t size = 0, pages = 0;
    f >> size >> pages;
    return pages * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
  };
  const caffe2::TypeMeta before = c10::get_default_dtype();
  c10::set_default_dtype(c10::scalarTypeToTypeMeta(at::kBFloat16));
  const int64_t r0 = resident();
  mt::lm::LMModel m(mt::lm::LMConfig::small());
  const int64_t grown = resident() - r0;
  c10::set_default_dtype(before);
  const int64_t bytes = m->num_parameters() * 2;
  EXPECT_GT(bytes, 150'000'000);
  EXPECT_LT(grown, bytes / 10) << "resident memory grew by " << grown << " bytes for " << bytes << " bytes of weights";
}

}  // namespace
