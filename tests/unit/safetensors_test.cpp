// Tests of the safetensors reader/writer (src/io/safetensors.{h,cpp}): round trips of every dtype
// libtorch supports, zero-copy views, atomic writes, every corrupt-header case, and a fuzz test.
#include "io/safetensors.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"
#include "util/error.h"

namespace fs = std::filesystem;
using mt::io::SafeTensors;
using mt::test::TempDir;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

namespace {

// ---- helpers ---------------------------------------------------------------------------------------

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string u64le(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file built byte by byte: u64 length (the header's own unless `length` is given),
// the header text as is, then the data bytes.
std::string raw_file(const std::string& header, const std::string& data = "", int64_t length = -1) {
  return u64le(length < 0 ? header.size() : static_cast<uint64_t>(length)) + header + data;
}

void write_raw(const std::string& path, const std::string& header, const std::string& data = "", int64_t length = -1) {
  write_bytes(path, raw_file(header, data, length));
}

// Opening `path` must throw mt::Error whose message contains the path and every one of `parts`.
void expect_open_error(const std::string& path, std::initializer_list<std::string> parts) {
  try {
    SafeTensors f(path);
    ADD_FAILURE() << "expected mt::Error opening " << path << ", but it opened with " << f.tensors().size()
                  << " tensors";
  } catch (const mt::Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected mt::Error, got another exception: " << e.what();
  }
}

// Any call that must throw mt::Error mentioning every one of `parts`.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "expected mt::Error";
  } catch (const mt::Error& e) {
    std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected mt::Error, got another exception: " << e.what();
  }
}

// A tensor of the given dtype and shape with varied values (negative ones too where the type has them).
at::Tensor sample(at::ScalarType t, at::IntArrayRef shape, int seed = 0) {
  at::manual_seed(seed);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  switch (t) {
    case at::kBool: return at::rand(shape, opts) > 0.5;
    case at::kByte: return at::randint(0, 256, shape, opts).to(t);
    case at::kChar: return at::randint(-128, 128, shape, opts).to(t);
    case at::kShort: return at::randint(-32768, 32768, shape, opts).to(t);
    case at::kInt: return at::randint(-(1ll << 31), (1ll << 31) - 1, shape, opts).to(at::kLong).to(t);
    case at::kLong:
      // Values beyond 2^53 too: they only survive if the bytes are copied exactly.
      return at::randint(-(1ll << 40), 1ll << 40, shape, at::TensorOptions().dtype(at::kLong)) * 4099 + 7;
    default: return (at::randn(shape, opts) * 100).to(t);
  }
}

// Same dtype, shape and bytes (bitwise, so NaNs and odd BOOL bytes compare too).
void expect_same(const at::Tensor& got, const at::Tensor& want) {
  ASSERT_EQ(got.scalar_type(), want.scalar_type());
  ASSERT_EQ(got.sizes(), want.sizes());
  auto w = want.contiguous();
  auto g = got.contiguous();
  ASSERT_EQ(g.nbytes(), w.nbytes());
  if (w.nbytes() > 0) EXPECT_EQ(std::memcmp(g.data_ptr(), w.data_ptr(), w.nbytes()), 0);
}

struct DType {
  const char* name;
  at::ScalarType type;
  size_t size;
};
const DType kTorchDTypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},  {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},   {"I32", at::kInt, 4},   {"I16", at::kShort, 2}, {"I8", at::kChar, 1},
    {"U8", at::kByte, 1},    {"BOOL", at::kBool, 1},
};

// Files only list the dtype names; no temp files must be left in the folder.
std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

// ---- dtype table -----------------------------------------------------------------------------------

TEST(SafetensorsDType, NamesSizesAndScalarTypes) {
  for (const auto& d : kTorchDTypes) {
    SCOPED_TRACE(d.name);
    EXPECT_EQ(mt::io::dtype_size(d.name), d.size);
    EXPECT_EQ(mt::io::to_scalar_type(d.name), d.type);
    EXPECT_EQ(mt::io::from_scalar_type(d.type), d.name);
    EXPECT_EQ(at::elementSize(d.type), d.size);
  }
  EXPECT_EQ(mt::io::dtype_size("U16"), 2u);
  EXPECT_EQ(mt::io::dtype_size("F8_E4M3"), 1u);
  EXPECT_EQ(mt::io::dtype_size("F33"), 0u);
  EXPECT_EQ(mt::io::dtype_size("f32"), 0u);  // names are case-sensitive
  EXPECT_THROW(mt::io::to_scalar_type("F33"), mt::Error);
  EXPECT_THROW(mt::io::to_scalar_type("U16"), mt::Error);
  EXPECT_THROW(mt::io::from_scalar_type(at::kComplexFloat), mt::Error);
}

// ---- round trips, one dtype at a time --------------------------------------------------------------

class SafetensorsRoundTrip : public ::testing::TestWithParam<DType> {};

TEST_P(SafetensorsRoundTrip, ShapesScalarsEmptyAndNonContiguous) {
  const auto d = GetParam();
  TempDir tmp;
  const std::string path = tmp.file("t.safetensors");
  at::Tensor base = sample(d.type, {4, 6}, 1);
  std::vector<std::pair<std::string, at::Tensor>> ts = {
      {"matrix", sample(d.type, {3, 5}, 2)},
      {"scalar", sample(d.type, {}, 3)},  // 0-d
      {"empty", at::empty({0, 7}, at::TensorOptions().dtype(d.type))},
      {"empty_middle", at::empty({2, 0, 3}, at::TensorOptions().dtype(d.type))},
      {"vector", sample(d.type, {17}, 4)},
      {"transposed", base.t()},                                // non-contiguous
      {"strided", base.slice(1, 0, 6, 2)},                     // step 2 along the last dim
      {"expanded", sample(d.type, {1, 3}, 5).expand({4, 3})},  // stride 0
      {"rank5", sample(d.type, {2, 1, 3, 1, 2}, 6)},
  };
  ASSERT_FALSE(ts[5].second.is_contiguous());
  ASSERT_FALSE(ts[6].second.is_contiguous());
  mt::io::save(path, ts);

  SafeTensors f(path);
  EXPECT_EQ(f.path(), path);
  ASSERT_EQ(f.tensors().size(), ts.size());
  for (const auto& [name, want] : ts) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(f.contains(name));
    const auto& info = f.info(name);
    EXPECT_EQ(info.name, name);
    EXPECT_EQ(info.dtype, d.name);
    EXPECT_EQ(at::IntArrayRef(info.shape), want.sizes());
    EXPECT_EQ(info.numel(), want.numel());
    EXPECT_EQ(info.end - info.begin, static_cast<uint64_t>(want.numel()) * d.size);
    at::Tensor got = f.get(name);
    EXPECT_TRUE(got.is_contiguous());
    expect_same(got, want);
    at::Tensor v = f.view(name);
    expect_same(v, want);
    expect_same(f.get(name, want.sizes()), want);
    if (want.numel() > 0 && d.type != at::kBool && !at::isFloatingType(d.type)) EXPECT_TRUE(at::equal(got, want));
  }
  // Saved in the order given: the offsets increase in that order and leave no gaps.
  uint64_t off = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& info = f.tensors()[i];
    EXPECT_EQ(info.name, ts[i].first);
    EXPECT_EQ(info.begin, off);
    off = info.end;
  }
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(bytes.size(), 8 + n + off);
  auto all = mt::io::load_all(path);
  ASSERT_EQ(all.size(), ts.size());
  for (const auto& [name, want] : ts) expect_same(all.at(name), want);
}

INSTANTIATE_TEST_SUITE_P(AllTorchDTypes, SafetensorsRoundTrip, ::testing::ValuesIn(kTorchDTypes),
                         [](const ::testing::TestParamInfo<DType>& i) { return std::string(i.param.name); });

// ---- round trips, everything together --------------------------------------------------------------

TEST(Safetensors, AllDTypesInOneFileWithMetadata) {
  TempDir tmp;
  const std::string path = tmp.file("all.safetensors");
  std::map<std::string, at::Tensor> ts;
  int seed = 10;
  for (const auto& d : kTorchDTypes) ts[std::string("t_") + d.name] = sample(d.type, {2, 3}, seed++);
  std::map<std::string, std::string> meta = {
      {"format", "pt"}, {"empty", ""}, {"unicode", "d\xc3\xa9j\xc3\xa0 vu \xe2\x9c\x93"}, {"quote", "a \"b\" \\c\n"}};
  mt::io::save(path, ts, meta);
  SafeTensors f(path);
  EXPECT_EQ(f.metadata(), meta);
  // The map overload writes in the map's (sorted) order.
  std::vector<std::string> names;
  for (const auto& [k, v] : ts) names.push_back(k);
  EXPECT_EQ(f.names(), names);
  for (const auto& [name, want] : ts) {
    SCOPED_TRACE(name);
    expect_same(f.get(name), want);
    expect_same(f.view(name), want);
  }
}

TEST(Safetensors, NoMetadataWritesNoMetadataKey) {
  TempDir tmp;
  const std::string path = tmp.file("a.safetensors");
  mt::io::save(path, std::map<std::string, at::Tensor>{{"x", at::ones({2})}});
  std::string bytes = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(bytes.find("__metadata__"), std::string::npos);
  EXPECT_TRUE(SafeTensors(path).metadata().empty());
}

TEST(Safetensors, ZeroTensorsAndEmptyFile) {
  TempDir tmp;
  const std::string path = tmp.file("none.safetensors");
  mt::io::save(path, std::vector<std::pair<std::string, at::Tensor>>{}, {{"k", "v"}});
  SafeTensors f(path);
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_TRUE(f.names().empty());
  EXPECT_EQ(f.metadata().at("k"), "v");
  mt::io::save(path, std::vector<std::pair<std::string, at::Tensor>>{});
  EXPECT_TRUE(SafeTensors(path).tensors().empty());
  EXPECT_TRUE(mt::io::load_all(path).empty());
}

TEST(Safetensors, FileLayoutMatchesTheFormat) {
  TempDir tmp;
  const std::string path = tmp.file("layout.safetensors");
  at::Tensor a = at::arange(6, at::kFloat).reshape({2, 3});
  at::Tensor b = at::arange(3, at::kLong);
  mt::io::save(path, Named{{"b", b}, {"a", a}}, {{"m", "1"}});
  std::string bytes = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header padded so the data buffer is 8-byte aligned";
  ASSERT_EQ(bytes.size(), 8 + n + 3 * 8 + 6 * 4);
  auto h = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(h["__metadata__"], nlohmann::json({{"m", "1"}}));
  EXPECT_EQ(h["b"]["dtype"], "I64");
  EXPECT_EQ(h["b"]["shape"], nlohmann::json({3}));
  EXPECT_EQ(h["b"]["data_offsets"], nlohmann::json({0, 24}));
  EXPECT_EQ(h["a"]["dtype"], "F32");
  EXPECT_EQ(h["a"]["shape"], nlohmann::json({2, 3}));
  EXPECT_EQ(h["a"]["data_offsets"], nlohmann::json({24, 48}));
  // Little-endian element bytes right after the header.
  int64_t b1 = 0;
  std::memcpy(&b1, bytes.data() + 8 + n + 8, 8);
  EXPECT_EQ(b1, 1);
  float a5 = 0;
  std::memcpy(&a5, bytes.data() + 8 + n + 24 + 5 * 4, 4);
  EXPECT_EQ(a5, 5.f);
}

TEST(Safetensors, ReadsAHandWrittenFile) {
  TempDir tmp;
  const std::string path = tmp.file("hand.safetensors");
  std::string data;
  for (int16_t v : {1, -2, 3, -4}) data.append(reinterpret_cast<const char*>(&v), 2);
  data.append("\x01\x00\x01", 3);
  write_raw(path,
            R"({"__metadata__":{"who":"hand"},"s":{"dtype":"I16","shape":[2,2],"data_offsets":[0,8]},)"
            R"("m":{"dtype":"BOOL","shape":[3],"data_offsets":[8,11]}})",
            data);
  SafeTensors f(path);
  EXPECT_EQ(f.metadata().at("who"), "hand");
  EXPECT_TRUE(at::equal(f.get("s"), at::tensor({1, -2, 3, -4}, at::kShort).reshape({2, 2})));
  EXPECT_TRUE(at::equal(f.get("m"), at::tensor({1, 0, 1}, at::kByte).to(at::kBool)));
}

TEST(Safetensors, TensorsAreListedInOffsetOrder) {
  TempDir tmp;
  const std::string path = tmp.file("order.safetensors");
  // JSON key order (and alphabetical order) differ from the data order.
  std::string data(4 * 4, '\0');
  write_raw(path,
            R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},)"
            R"("z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("m":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
            R"("b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
            data);
  SafeTensors f(path);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"z", "b", "m", "a"}));
  uint64_t prev = 0;
  for (const auto& t : f.tensors()) {
    EXPECT_GE(t.begin, prev);
    prev = t.end;
  }
  // Lookup by name still works after the sort.
  EXPECT_EQ(f.info("a").begin, 12u);
  EXPECT_EQ(f.info("z").begin, 0u);
  EXPECT_EQ(f.info("b").dtype, "U8");
}

TEST(Safetensors, GapsAndEmptyTensorsAnywhereAreAccepted) {
  TempDir tmp;
  const std::string path = tmp.file("gaps.safetensors");
  std::string data(12, '\0');
  float one = 1.f, two = 2.f;
  std::memcpy(&data[0], &one, 4);
  std::memcpy(&data[8], &two, 4);
  write_raw(path,
            R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("e":{"dtype":"F32","shape":[0],"data_offsets":[2,2]},)"
            R"("y":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
            data);
  SafeTensors f(path);
  EXPECT_EQ(f.get("x").item<float>(), 1.f);
  EXPECT_EQ(f.get("y").item<float>(), 2.f);
  EXPECT_EQ(f.get("e").numel(), 0);
  EXPECT_EQ(f.view("e").numel(), 0);
}

TEST(Safetensors, TensorsRequiringGradAndNegViews) {
  TempDir tmp;
  const std::string path = tmp.file("special.safetensors");
  at::Tensor w = at::randn({3, 2}).set_requires_grad(true);
  at::Tensor x = at::arange(4, at::kFloat);
  at::Tensor neg = at::_neg_view(x);  // lazily negated: storage holds x, values are -x
  ASSERT_TRUE(neg.is_neg());
  mt::io::save(path, Named{{"w", w}, {"neg", neg}});
  SafeTensors f(path);
  EXPECT_FALSE(f.get("w").requires_grad());
  EXPECT_TRUE(at::equal(f.get("w"), w.detach()));
  EXPECT_TRUE(at::equal(f.get("neg"), -x));
}

// ---- view() vs get() ---------------------------------------------------------------------------------

TEST(Safetensors, ViewIsZeroCopyAndGetCopies) {
  TempDir tmp;
  const std::string path = tmp.file("v.safetensors");
  at::Tensor a = at::randn({64, 32});
  mt::io::save(path, Named{{"a", a}, {"b", at::arange(10, at::kLong)}});
  SafeTensors f(path);
  at::Tensor v1 = f.view("a"), v2 = f.view("a");
  at::Tensor g1 = f.get("a"), g2 = f.get("a");
  EXPECT_EQ(v1.data_ptr(), v2.data_ptr()) << "views point into the same mapping";
  EXPECT_NE(g1.data_ptr(), g2.data_ptr()) << "get() returns independent copies";
  EXPECT_NE(g1.data_ptr(), v1.data_ptr());
  EXPECT_TRUE(at::equal(v1, a));
  EXPECT_TRUE(at::equal(g1, v1));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(v1.data_ptr()) % 8, 0u);
  // Views of different tensors are adjacent slices of the one mapping.
  at::Tensor vb = f.view("b");
  EXPECT_EQ(static_cast<const char*>(vb.data_ptr()) - static_cast<const char*>(v1.data_ptr()),
            static_cast<ptrdiff_t>(f.info("b").begin - f.info("a").begin));
  // get() copies are writable and independent of the file.
  g1.zero_();
  EXPECT_TRUE(at::equal(f.get("a"), a));
}

TEST(Safetensors, ViewOutlivesTheSafeTensorsObject) {
  TempDir tmp;
  const std::string path = tmp.file("v.safetensors");
  at::Tensor a = at::randn({128, 16});
  at::Tensor b = at::randint(0, 1000, {50}, at::kLong);
  mt::io::save(path, Named{{"a", a}, {"b", b}});
  at::Tensor va, vb;
  {
    SafeTensors f(path);
    va = f.view("a");
    vb = f.view("b");
  }
  // The mapping stays alive with the views, even with the file gone.
  fs::remove(path);
  EXPECT_TRUE(at::equal(va, a));
  EXPECT_TRUE(at::equal(vb, b));
  EXPECT_NEAR(va.sum().item<double>(), a.sum().item<double>(), 1e-3);
  va = at::Tensor();
  EXPECT_TRUE(at::equal(vb, b));  // one view going away does not unmap the other
}

TEST(Safetensors, ViewOfUnalignedDataIsCorrect) {
  TempDir tmp;
  const std::string path = tmp.file("unaligned.safetensors");
  // A header of odd length (valid; other writers do not always pad) leaves the data unaligned.
  std::string header =
      R"({"d":{"dtype":"F64","shape":[3],"data_offsets":[0,24]},"f":{"dtype":"F32","shape":[2],"data_offsets":[24,32]}})";
  if (header.size() % 2 == 0) header += " ";
  std::string data(32, '\0');
  double dv[3] = {1.5, -2.25, 1e300};
  float fv[2] = {3.5f, -0.125f};
  std::memcpy(&data[0], dv, 24);
  std::memcpy(&data[24], fv, 8);
  write_raw(path, header, data);
  SafeTensors f(path);
  EXPECT_TRUE(at::equal(f.view("d"), at::tensor({1.5, -2.25, 1e300}, at::kDouble)));
  EXPECT_TRUE(at::equal(f.view("f"), at::tensor({3.5f, -0.125f})));
  EXPECT_TRUE(at::equal(f.get("d"), f.view("d")));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.view("d").data_ptr()) % 8, 0u);
}

TEST(Safetensors, LookupErrorsNameFileTensorAndShapes) {
  TempDir tmp;
  const std::string path = tmp.file("l.safetensors");
  mt::io::save(path, Named{{"w", at::zeros({2, 3})}});
  SafeTensors f(path);
  EXPECT_FALSE(f.contains("nope"));
  expect_error([&] { f.get("nope"); }, {path, "'nope'"});
  expect_error([&] { f.view("nope"); }, {path, "'nope'"});
  expect_error([&] { f.info("nope"); }, {path, "'nope'"});
  expect_error([&] { f.get("w", {3, 2}); }, {path, "'w'", "[3, 2]", "[2, 3]"});
  expect_error([&] { f.get("w", {2, 3, 1}); }, {path, "'w'", "[2, 3, 1]"});
  EXPECT_NO_THROW(f.get("w", {2, 3}));
}

TEST(Safetensors, DTypeUnknownToLibtorchOpensButGetNamesFileAndTensor) {
  TempDir tmp;
  const std::string path = tmp.file("u16.safetensors");
  write_raw(
      path,
      R"({"u":{"dtype":"U16","shape":[2],"data_offsets":[0,4]},"f":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
      std::string(8, '\0'));
  SafeTensors f(path);
  EXPECT_EQ(f.info("u").dtype, "U16");
  EXPECT_EQ(f.get("f").item<float>(), 0.f);
  expect_error([&] { f.get("u"); }, {path, "'u'", "U16"});
  expect_error([&] { f.view("u"); }, {path, "'u'", "U16"});
  expect_error([&] { mt::io::load_all(path); }, {path, "'u'", "U16"});
}

// ---- writer errors and atomicity ---------------------------------------------------------------------

TEST(SafetensorsWriter, RejectsBadNamesAndDTypesWithoutCreatingAFile) {
  TempDir tmp;
  const std::string path = tmp.file("bad.safetensors");
  expect_error([&] { mt::io::save(path, Named{{"", at::ones({1})}}); }, {path, "name"});
  expect_error([&] { mt::io::save(path, Named{{"__metadata__", at::ones({1})}}); }, {path, "__metadata__"});
  expect_error(
      [&] {
        mt::io::save(path, Named{{"a", at::ones({1})}, {"a", at::ones({2})}});
      },
      {path, "duplicate", "'a'"});
  expect_error(
      [&] {
        mt::io::save(path, Named{{"c", at::ones({2}, at::kComplexFloat)}});
      },
      {path, "'c'", "ComplexFloat"});
  expect_error([&] { mt::io::save(path, Named{{"u", at::Tensor()}}); }, {path, "'u'"});
  expect_error([&] { mt::io::save(path, Named{{std::string("bad\xff", 4), at::ones({1})}}); }, {path});
  expect_error([&] { mt::io::save(path, Named{{"a", at::ones({1})}}, {{"k", std::string("\xc3", 1)}}); }, {path});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(listing(tmp.path).empty()) << "no temp files left behind";
}

TEST(SafetensorsWriter, OverwriteReplacesTheFileAndLeavesNoTempFile) {
  TempDir tmp;
  const std::string path = tmp.file("w.safetensors");
  mt::io::save(path, Named{{"old", at::ones({1000})}});
  mt::io::save(path, Named{{"new", at::arange(5, at::kInt)}}, {{"v", "2"}});
  SafeTensors f(path);
  EXPECT_EQ(f.names(), std::vector<std::string>{"new"});
  EXPECT_EQ(f.metadata().at("v"), "2");
  EXPECT_TRUE(at::equal(f.get("new"), at::arange(5, at::kInt)));
  EXPECT_EQ(listing(tmp.path), std::vector<std::string>{"w.safetensors"});
}

TEST(SafetensorsWriter, OverwriteDoesNotDisturbAnOpenReader) {
  TempDir tmp;
  const std::string path = tmp.file("w.safetensors");
  at::Tensor a = at::randn({256});
  mt::io::save(path, Named{{"a", a}});
  SafeTensors old(path);
  at::Tensor v = old.view("a");
  mt::io::save(path, Named{{"a", at::zeros({256})}});  // rename: the old inode stays mapped
  EXPECT_TRUE(at::equal(v, a));
  EXPECT_TRUE(at::equal(old.get("a"), a));
  EXPECT_TRUE(at::equal(SafeTensors(path).get("a"), at::zeros({256})));
}

TEST(SafetensorsWriter, FailedWritesLeaveTheOldFileUntouched) {
  TempDir tmp;
  const std::string path = tmp.file("keep.safetensors");
  at::Tensor a = at::randn({10});
  mt::io::save(path, Named{{"a", a}}, {{"gen", "1"}});
  const std::string before = read_bytes(path);

  // Fails while building the bytes.
  expect_error([&] { mt::io::save(path, Named{{"a", at::ones({1})}, {"c", at::ones({1}, at::kComplexDouble)}}); }, {});
  EXPECT_EQ(read_bytes(path), before);

  // Fails creating the temp file: a folder that does not exist.
  const std::string missing = tmp.file("no/such/folder/keep.safetensors");
  expect_error([&] { mt::io::save(missing, Named{{"a", at::ones({1})}}); }, {missing});
  EXPECT_FALSE(fs::exists(tmp.file("no")));
  expect_error([&] { mt::io::atomic_write(missing, "x"); }, {missing});

  // Fails at the rename: the target is a folder that is not empty.
  fs::create_directory(tmp.file("dir.safetensors"));
  write_bytes(tmp.file("dir.safetensors/inside"), "x");
  expect_error(
      [&] {
        mt::io::save(tmp.file("dir.safetensors"), Named{{"a", at::ones({1})}});
      },
      {"dir.safetensors", "rename"});
  EXPECT_TRUE(fs::is_directory(tmp.file("dir.safetensors")));

  EXPECT_EQ(read_bytes(path), before);
  EXPECT_TRUE(at::equal(SafeTensors(path).get("a"), a));
  EXPECT_EQ(listing(tmp.path), (std::vector<std::string>{"dir.safetensors", "keep.safetensors"}))
      << "no temp files left behind";
}

TEST(SafetensorsWriter, AtomicWriteBytesAndRelativePaths) {
  TempDir tmp;
  const std::string path = tmp.file("bytes.bin");
  std::string bytes;
  for (int i = 0; i < 100000; ++i) bytes.push_back(static_cast<char>(i * 7));
  mt::io::atomic_write(path, bytes);
  EXPECT_EQ(read_bytes(path), bytes);
  mt::io::atomic_write(path, "");
  EXPECT_EQ(fs::file_size(path), 0u);
  // A bare file name writes into the current folder.
  auto cwd = fs::current_path();
  fs::current_path(tmp.path);
  mt::io::save("rel.safetensors", Named{{"x", at::ones({3})}});
  fs::current_path(cwd);
  EXPECT_TRUE(at::equal(SafeTensors(tmp.file("rel.safetensors")).get("x"), at::ones({3})));
  EXPECT_EQ(listing(tmp.path), (std::vector<std::string>{"bytes.bin", "rel.safetensors"}));
}

// ---- corrupt files: every check names the file, and the tensor where there is one ----------------------

namespace {
const char* kF32x2 = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
std::string entry(const std::string& body) { return R"({"t":)" + body + "}"; }
}  // namespace

TEST(SafetensorsCorrupt, ShorterThanEightBytes) {
  TempDir tmp;
  const std::string p = tmp.file("short.safetensors");
  for (size_t n : {0, 1, 7}) {
    write_bytes(p, std::string(n, '\0'));
    expect_open_error(p, {"shorter than the 8-byte header length"});
  }
}

TEST(SafetensorsCorrupt, HeaderLengthBeyondBound) {
  TempDir tmp;
  const std::string p = tmp.file("big.safetensors");
  write_raw(p, "{}", "", static_cast<int64_t>(mt::io::kMaxHeaderBytes + 1));
  expect_open_error(p, {"header length", "bound"});
  write_bytes(p, u64le(UINT64_MAX) + "{}");
  expect_open_error(p, {"header length", "bound"});
  write_bytes(p, u64le(1ull << 63) + "{}");
  expect_open_error(p, {"header length", "bound"});
}

TEST(SafetensorsCorrupt, HeaderLengthPastEndOfFile) {
  TempDir tmp;
  const std::string p = tmp.file("past.safetensors");
  write_raw(p, "{}", "", 3);
  expect_open_error(p, {"past the end of the file"});
  write_raw(p, std::string(kF32x2), "", 1000);
  expect_open_error(p, {"past the end of the file"});
  write_bytes(p, u64le(1));  // exactly 8 bytes, header says 1 more
  expect_open_error(p, {"past the end of the file"});
}

TEST(SafetensorsCorrupt, HeaderNotJson) {
  TempDir tmp;
  const std::string p = tmp.file("nj.safetensors");
  for (std::string h :
       {std::string(""), std::string("{not json"), std::string("{\"t\":"), std::string("{} trailing"),
        std::string("\xff\xfe{}", 4), std::string("{\"t\":{\"dtype\":\"F\xff\"}}"), std::string("{}\0\0\0", 5),
        std::string("{}\0garbage", 10), std::string("{\"__metadata__\":{\"a\":\"b\0c\"}}", 28)}) {
    write_raw(p, h);
    expect_open_error(p, {"not valid JSON"});
  }
}

TEST(SafetensorsCorrupt, HeaderJsonNotAnObject) {
  TempDir tmp;
  const std::string p = tmp.file("no.safetensors");
  for (std::string h : {"[1,2]", "\"str\"", "null", "42", "true", "[]"}) {
    write_raw(p, h);
    expect_open_error(p, {"not a JSON object"});
  }
}

TEST(SafetensorsCorrupt, EntryNotAnObject) {
  TempDir tmp;
  const std::string p = tmp.file("e.safetensors");
  for (std::string body : {"5", "null", "[\"F32\",[2],[0,8]]", "\"F32\""}) {
    write_raw(p, entry(body), std::string(8, '\0'));
    expect_open_error(p, {"'t'", "not an object"});
  }
}

TEST(SafetensorsCorrupt, MissingOrMistypedFields) {
  TempDir tmp;
  const std::string p = tmp.file("m.safetensors");
  const std::string d(8, '\0');
  struct Case {
    std::string body, says;
  };
  for (const auto& c : std::vector<Case>{
           {R"({"shape":[2],"data_offsets":[0,8]})", "dtype"},
           {R"({"dtype":7,"shape":[2],"data_offsets":[0,8]})", "dtype"},
           {R"({"dtype":null,"shape":[2],"data_offsets":[0,8]})", "dtype"},
           {R"({"dtype":"F32","data_offsets":[0,8]})", "shape"},
           {R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})", "shape"},
           {R"({"dtype":"F32","shape":{"0":2},"data_offsets":[0,8]})", "shape"},
           {R"({"dtype":"F32","shape":[2]})", "data_offsets"},
           {R"({"dtype":"F32","shape":[2],"data_offsets":8})", "data_offsets"},
           {R"({"dtype":"F32","shape":[2],"data_offsets":[8]})", "data_offsets"},
           {R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,8]})", "data_offsets"},
           {R"({"dtype":"F32","shape":[2],"data_offsets":[]})", "data_offsets"},
           {R"({})", "dtype"},
       }) {
    SCOPED_TRACE(c.body);
    write_raw(p, entry(c.body), d);
    expect_open_error(p, {"'t'", c.says});
  }
}

TEST(SafetensorsCorrupt, UnknownDType) {
  TempDir tmp;
  const std::string p = tmp.file("d.safetensors");
  for (std::string dt : {"F33", "f32", "", "FLOAT", "C64"}) {
    write_raw(p, entry(R"({"dtype":")" + dt + R"(","shape":[2],"data_offsets":[0,8]})"), std::string(8, '\0'));
    expect_open_error(p, {"'t'", "unknown dtype '" + dt + "'"});
  }
}

TEST(SafetensorsCorrupt, BadShapeEntries) {
  TempDir tmp;
  const std::string p = tmp.file("s.safetensors");
  for (std::string shape : {"[-1]", "[2,-2]", "[2.5]", "[2.0]", "[\"2\"]", "[null]", "[[2]]", "[true]",
                            // above INT64_MAX: would wrap negative in an int64 shape
                            "[18446744073709551615, 0]", "[9223372036854775808, 0]"}) {
    SCOPED_TRACE(shape);
    write_raw(p, entry(R"({"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,0]})"), std::string(8, '\0'));
    expect_open_error(p, {"'t'", "shape entries must be non-negative integers"});
  }
}

TEST(SafetensorsCorrupt, ShapeOverflow) {
  TempDir tmp;
  const std::string p = tmp.file("o.safetensors");
  for (std::string shape : {"[4611686018427387904, 4611686018427387904]", "[9223372036854775807, 4]",
                            "[4294967296, 4294967296, 4294967296]"}) {
    SCOPED_TRACE(shape);
    write_raw(p, entry(R"({"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,8]})"), std::string(8, '\0'));
    expect_open_error(p, {"'t'", "overflow"});
  }
  write_raw(p, entry(R"({"dtype":"U8","shape":[4611686018427387904, 4611686018427387904, 0],"data_offsets":[0,0]})"));
  expect_open_error(p, {"'t'", "overflow"});
  // No bytes, but libtorch's int64 strides (products of the dims after each) would still overflow.
  write_raw(p, entry(R"({"dtype":"F32","shape":[0, 4611686018427387904, 4611686018427387904],"data_offsets":[0,0]})"));
  expect_open_error(p, {"'t'", "overflow"});
  // Large empty shapes that libtorch can represent are fine.
  write_raw(p, entry(R"({"dtype":"F32","shape":[0, 1048576, 1048576],"data_offsets":[0,0]})"));
  {
    SafeTensors f(p);
    EXPECT_EQ(f.info("t").numel(), 0);
    EXPECT_EQ(f.get("t").numel(), 0);
    EXPECT_EQ(f.view("t").size(2), 1048576);
    EXPECT_EQ(f.get("t").stride(0), 1048576ll * 1048576);
  }
  // numel 2^63 - 1 fits in 64 bits but no file holds it: a size mismatch, not a crash.
  write_raw(p, entry(R"({"dtype":"U8","shape":[9223372036854775807],"data_offsets":[0,8]})"), std::string(8, '\0'));
  expect_open_error(p, {"'t'", "needs"});
}

TEST(SafetensorsCorrupt, BadDataOffsets) {
  TempDir tmp;
  const std::string p = tmp.file("off.safetensors");
  const std::string d(16, '\0');
  write_raw(p, entry(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), d);
  expect_open_error(p, {"'t'", "begin 8 > end 0"});
  for (std::string offs : {"[-8,0]", "[0,-8]", "[0.0,8.0]", "[0,8.5]", "[\"0\",8]", "[null,8]"}) {
    SCOPED_TRACE(offs);
    write_raw(p, entry(R"({"dtype":"F32","shape":[2],"data_offsets":)" + offs + "}"), d);
    expect_open_error(p, {"'t'", "data_offsets"});
  }
}

TEST(SafetensorsCorrupt, OffsetsPastTheDataBuffer) {
  TempDir tmp;
  const std::string p = tmp.file("trunc.safetensors");
  write_raw(p, entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), std::string(7, '\0'));
  expect_open_error(p, {"'t'", "past the data buffer", "7 bytes"});
  write_raw(p, entry(R"({"dtype":"F32","shape":[0],"data_offsets":[100,100]})"), std::string(8, '\0'));
  expect_open_error(p, {"'t'", "past the data buffer"});
  write_raw(p, entry(R"({"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]})"),
            std::string(8, '\0'));
  expect_open_error(p, {"'t'", "past the data buffer"});

  // A real file cut short, at every length inside its data.
  const std::string good = tmp.file("good.safetensors");
  mt::io::save(good, Named{{"a", at::ones({4})}, {"last", at::ones({3}, at::kLong)}});
  std::string bytes = read_bytes(good);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  for (size_t cut = 8 + n; cut < bytes.size(); ++cut) {
    write_bytes(p, bytes.substr(0, cut));
    expect_open_error(p, {"past the data buffer", "truncated"});
  }
}

TEST(SafetensorsCorrupt, SizeDoesNotMatchShapeTimesDType) {
  TempDir tmp;
  const std::string p = tmp.file("size.safetensors");
  const std::string d(64, '\0');
  write_raw(p, entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,12]})"), d);
  expect_open_error(p, {"'t'", "[2]", "F32", "needs 8 bytes", "span 12"});
  write_raw(p, entry(R"({"dtype":"F64","shape":[2,3],"data_offsets":[0,24]})"), d);
  expect_open_error(p, {"'t'", "needs 48 bytes", "span 24"});
  write_raw(p, entry(R"({"dtype":"BF16","shape":[],"data_offsets":[0,0]})"), d);
  expect_open_error(p, {"'t'", "needs 2 bytes", "span 0"});
  write_raw(p, entry(R"({"dtype":"I8","shape":[0],"data_offsets":[0,1]})"), d);
  expect_open_error(p, {"'t'", "needs 0 bytes", "span 1"});
}

TEST(SafetensorsCorrupt, OverlappingTensors) {
  TempDir tmp;
  const std::string p = tmp.file("ov.safetensors");
  const std::string d(64, '\0');
  write_raw(
      p,
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      d);
  expect_open_error(p, {"'a'", "'b'", "overlap"});
  // Same range twice.
  write_raw(
      p,
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})",
      d);
  expect_open_error(p, {"'a'", "'b'", "overlap"});
  // One inside a non-adjacent earlier one.
  write_raw(
      p,
      R"({"big":{"dtype":"U8","shape":[32],"data_offsets":[0,32]},"x":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
      R"("y":{"dtype":"U8","shape":[2],"data_offsets":[10,12]}})",
      d);
  expect_open_error(p, {"'big'", "overlap"});
  // An empty tensor between two overlapping ones must not hide the overlap.
  write_raw(
      p,
      R"({"big":{"dtype":"U8","shape":[32],"data_offsets":[0,32]},"e":{"dtype":"U8","shape":[0],"data_offsets":[3,3]},)"
      R"("c":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})",
      d);
  expect_open_error(p, {"'big'", "'c'", "overlap"});
  // Touching is fine; empty tensors inside another are fine.
  write_raw(
      p,
      R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[8,16]},)"
      R"("e":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}})",
      d);
  EXPECT_NO_THROW(SafeTensors{p});
}

TEST(SafetensorsCorrupt, BadMetadata) {
  TempDir tmp;
  const std::string p = tmp.file("meta.safetensors");
  for (std::string m : {"5", "null", "[\"a\"]", "\"text\""}) {
    write_raw(p, R"({"__metadata__":)" + m + "}");
    expect_open_error(p, {"__metadata__ is not an object"});
  }
  for (std::string v : {"1", "null", "true", "{\"x\":\"y\"}", "[\"a\"]"}) {
    write_raw(p, R"({"__metadata__":{"ok":"fine","key":)" + v + "}}");
    expect_open_error(p, {"__metadata__", "'key'", "not a string"});
  }
}

TEST(SafetensorsCorrupt, FolderAndMissingFile) {
  TempDir tmp;
  expect_open_error(tmp.path.string(), {"folder"});
  const std::string missing = tmp.file("missing.safetensors");
  expect_open_error(missing, {"cannot open", "No such file"});
  expect_error([&] { mt::io::load_all(missing); }, {missing});
}

// ---- fuzz: mutated files load or throw mt::Error, never crash -------------------------------------------

TEST(SafetensorsFuzz, MutatedFilesLoadOrThrowMtError) {
  TempDir tmp;
  const std::string good = tmp.file("good.safetensors");
  mt::io::save(good,
               Named{{"f32", at::randn({3, 4})},
                     {"i64", at::arange(5, at::kLong)},
                     {"bool", at::rand({7}) > 0.5},
                     {"bf16", at::randn({2, 2}).to(at::kBFloat16)},
                     {"scalar", at::tensor(3.0, at::kDouble)},
                     {"empty", at::empty({0, 3})}},
               {{"format", "pt"}, {"n", "6"}});
  const std::string base = read_bytes(good);
  uint64_t hlen = 0;
  std::memcpy(&hlen, base.data(), 8);
  const std::string path = tmp.file("fuzz.safetensors");

  std::mt19937_64 rng(20240611);
  auto pick = [&](uint64_t n) { return n ? static_cast<size_t>(rng() % n) : 0; };
  int loaded = 0, rejected = 0;
  const int kIters = 600;
  for (int it = 0; it < kIters; ++it) {
    std::string b = base;
    const int kind = it % 7;
    if (kind == 0) {  // random byte flips anywhere
      for (int k = 0, n = 1 + pick(4); k < n; ++k) b[pick(b.size())] ^= static_cast<char>(1 + pick(255));
    } else if (kind == 1) {  // flips inside the header only
      for (int k = 0, n = 1 + pick(3); k < n; ++k) b[8 + pick(hlen)] ^= static_cast<char>(1 << pick(8));
    } else if (kind == 2) {  // truncation
      b.resize(pick(b.size()));
    } else if (kind == 3) {  // a digit of the header replaced: shapes and offsets change, JSON stays valid
      std::vector<size_t> digits;
      for (size_t i = 8; i < 8 + hlen; ++i)
        if (b[i] >= '0' && b[i] <= '9') digits.push_back(i);
      for (int k = 0, n = 1 + pick(2); k < n; ++k) b[digits[pick(digits.size())]] = "0123456789-."[pick(12)];
    } else if (kind == 4) {  // the length field changed
      uint64_t n = hlen;
      switch (pick(4)) {
        case 0: n = rng(); break;
        case 1: n = hlen + pick(64) - 32; break;
        case 2: n = hlen ^ (1ull << pick(64)); break;
        default: n = pick(b.size()); break;
      }
      std::memcpy(&b[0], &n, 8);
    } else if (kind == 5) {  // bytes inserted or deleted somewhere
      size_t at = pick(b.size());
      if (rng() & 1)
        b.insert(at, std::string(1 + pick(8), static_cast<char>(rng())));
      else
        b.erase(at, 1 + pick(8));
    } else {  // header text spliced: a random chunk of the header duplicated or removed
      size_t a = 8 + pick(hlen), len = 1 + pick(16);
      if (rng() & 1)
        b.insert(8 + pick(hlen), b.substr(a, len));
      else
        b.erase(a, std::min<size_t>(len, 8 + hlen - a));
    }
    write_bytes(path, b);
    try {
      SafeTensors f(path);
      for (const auto& t : f.tensors()) {
        at::Tensor g, v;
        try {
          g = f.get(t.name);
          v = f.view(t.name);
        } catch (const mt::Error&) {
          continue;  // e.g. a dtype changed to one libtorch lacks
        }
        ASSERT_EQ(g.nbytes(), t.end - t.begin);
        ASSERT_EQ(v.nbytes(), g.nbytes());
        if (g.nbytes()) ASSERT_EQ(std::memcmp(g.data_ptr(), v.data_ptr(), g.nbytes()), 0);
      }
      for (const auto& [k, v] : f.metadata()) (void)v.size();
      ++loaded;
    } catch (const mt::Error& e) {
      ASSERT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      ++rejected;
    } catch (const std::exception& e) {
      FAIL() << "iteration " << it << " (mutation " << kind << "): not an mt::Error: " << e.what();
    }
  }
  EXPECT_EQ(loaded + rejected, kIters);
  EXPECT_GT(loaded, 0);
  EXPECT_GT(rejected, kIters / 4);
  RecordProperty("loaded", loaded);
  RecordProperty("rejected", rejected);
}

// ---- interoperability with the reference implementation (Hugging Face's safetensors package) ----------
// Runs only where a Python with torch + safetensors is found: $MT_SAFETENSORS_PYTHON, or the venv that
// scripts/reference/setup_reference_env.sh creates; skipped otherwise.

namespace {
std::string safetensors_python() {
  std::vector<std::string> candidates;
  if (const char* p = std::getenv("MT_SAFETENSORS_PYTHON")) candidates.push_back(p);
  const char* cache = std::getenv("MOSHI_TTT_CACHE");
  const char* home = std::getenv("HOME");
  if (cache) candidates.push_back(std::string(cache) + "/refenv/bin/python");
  if (home) candidates.push_back(std::string(home) + "/.cache/moshi-ttt/refenv/bin/python");
  for (const auto& c : candidates)
    if (fs::exists(c)) return c;
  return "";
}
}  // namespace

TEST(SafetensorsInterop, ReferenceImplementationReadsOursAndWeReadIts) {
  const std::string py = safetensors_python();
  if (py.empty()) GTEST_SKIP() << "no Python with torch + safetensors (set MT_SAFETENSORS_PYTHON)";
  // (One Python run: importing torch takes seconds. Exit code 77 = the modules are missing: skip.)
  TempDir tmp;
  const std::string ours = tmp.file("ours.safetensors"), theirs = tmp.file("theirs.safetensors");
  Named ts;
  int seed = 100;
  for (const auto& d : kTorchDTypes) ts.push_back({std::string("t_") + d.name, sample(d.type, {3, 2}, seed++)});
  ts.push_back({"scalar", at::tensor(2.5f)});
  ts.push_back({"empty", at::empty({0, 4})});
  mt::io::save(ours, ts, {{"format", "pt"}, {"by", "moshi-ttt"}});
  // Python loads ours, checks metadata, writes every tensor back (+1 where it can) with its own writer.
  const std::string script = tmp.file("rt.py");
  {
    std::ofstream f(script);
    f << "import sys\n"
         "try:\n"
         "    import torch\n"
         "    from safetensors import safe_open\n"
         "    from safetensors.torch import load_file, save_file\n"
         "except ImportError:\n"
         "    sys.exit(77)\n"
         "with safe_open(sys.argv[1], 'pt') as f:\n"
         "    assert f.metadata() == {'format': 'pt', 'by': 'moshi-ttt'}, f.metadata()\n"
         "t = load_file(sys.argv[1])\n"
         "out = {k: (v if v.dtype == torch.bool else v + 1) for k, v in t.items()}\n"
         "save_file(out, sys.argv[2], metadata={'by': 'python'})\n";
  }
  std::string out;
  const int rc = mt::test::run("'" + py + "' '" + script + "' '" + ours + "' '" + theirs + "'", &out);
  if (rc == 77) GTEST_SKIP() << py << " lacks torch or safetensors";
  ASSERT_EQ(rc, 0) << out;
  SafeTensors f(theirs);
  EXPECT_EQ(f.metadata().at("by"), "python");
  ASSERT_EQ(f.tensors().size(), ts.size());
  for (const auto& [name, t] : ts) {
    SCOPED_TRACE(name);
    at::Tensor want = t.scalar_type() == at::kBool ? t : t + 1;
    expect_same(f.get(name), want);
    expect_same(f.view(name), want);
  }
}
