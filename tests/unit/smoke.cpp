#include <gtest/gtest.h>
#include "util/runtime.h"
TEST(Runtime, BuildInfoMentionsLibtorch) { EXPECT_NE(mt::build_info().find("libtorch"), std::string::npos); }
