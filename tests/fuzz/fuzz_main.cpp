// One libFuzzer binary per target (MT_FUZZ_TARGET names it); built by scripts/fuzz.sh.
#include <ATen/Parallel.h>

#include "targets.h"

#ifndef MT_FUZZ_TARGET
#error "define MT_FUZZ_TARGET"
#endif

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);  // one core per fuzzer; the parsers are serial anyway
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mt::fuzz::Target& t = mt::fuzz::target(MT_FUZZ_TARGET);
  t.run(data, size);
  return 0;
}
