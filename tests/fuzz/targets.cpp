#include "targets.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <typeinfo>

#include "audio/audio_io.h"
#include "io/codes_file.h"
#include "io/safetensors.h"
#include "text/interleaver.h"
#include "train/audio_index.h"
#include "train/data.h"
#include "train/train_config.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::fuzz {

namespace {

void abort_on_finding(const std::string& what) {
  std::fprintf(stderr, "FUZZ FINDING: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}
FindingHandler g_handler = abort_on_finding;

// One folder per process for the files the targets write, removed at exit.
const fs::path& work_dir() {
  static const fs::path dir = [] {
    std::error_code ec;
    fs::path base = fs::temp_directory_path(ec);
    if (ec || base.empty()) base = ".";
    std::string tmpl = (base / "moshi-ttt-fuzz-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("fuzz: cannot create a temporary folder");
    std::atexit([] {
      std::error_code e;
      fs::remove_all(work_dir(), e);
    });
    return fs::path(tmpl);
  }();
  return dir;
}

std::string put(const std::string& name, const void* data, size_t size) {
  const fs::path p = work_dir() / name;
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  f.close();
  if (!f) throw std::runtime_error("fuzz: cannot write " + p.string());
  return p.string();
}
std::string put(const std::string& name, const std::string& bytes) { return put(name, bytes.data(), bytes.size()); }

// --- the targets ---------------------------------------------------------------------------------

void run_safetensors(const uint8_t* data, size_t size) {
  const std::string path = put("input.safetensors", data, size);
  guarded("safetensors", {"input.safetensors"}, [&] {
    io::SafeTensors f(path);
    for (const auto& [k, v] : f.metadata()) (void)(k.size() + v.size());
    for (const auto& info : f.tensors()) {
      if (!f.contains(info.name)) g_handler("safetensors: listed tensor not found by name: " + info.name);
      const at::Tensor a = f.get(info.name);
      const at::Tensor b = f.view(info.name);
      if (a.numel() != info.numel() || b.numel() != info.numel())
        g_handler("safetensors: element count differs from the header for " + info.name);
      // Bytes, not values: a mutated float may be NaN, which equals nothing.
      const at::Tensor bc = b.contiguous();
      if (a.nbytes() != bc.nbytes() || (a.nbytes() > 0 && std::memcmp(a.data_ptr(), bc.data_ptr(), a.nbytes()) != 0))
        g_handler("safetensors: get and view differ for " + info.name);
    }
    io::load_all(path);
  });
}

void run_yaml_config(const uint8_t* data, size_t size) {
  const std::string path = put("input.yaml", data, size);
  guarded("yaml_config", {"input.yaml"}, [&] {
    train::TrainConfig c = train::TrainConfig::load(path);
    (void)c.chunk_frames();
  });
}

// A valid shard the fuzzed index may point at ("a.safetensors", [3, 40]).
void ensure_shard() {
  static bool done = false;
  if (done) return;
  std::vector<int64_t> v(3 * 40);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int64_t>(i % 17) - 1;
  io::save((work_dir() / "a.safetensors").string(),
           std::vector<std::pair<std::string, at::Tensor>>{{"codes", at::tensor(v, at::kLong).view({3, 40})}});
  done = true;
}

// Reads an index and walks its files as training would (two slots, chunks of 16, one pass), with a
// state() / restore() round trip half-way.
void walk_index(const std::string& index) {
  std::vector<train::TokenFile> files = train::read_token_index(index);
  train::LoaderConfig cfg;
  cfg.batch_size = 2;
  cfg.chunk_frames = 16;
  cfg.infinite = false;
  train::TokenLoader loader(files, cfg);
  train::TokenBatch b;
  for (int i = 0; i < 12 && loader.next(b); ++i) {
    if (i == 2) {
      train::TokenLoader again(files, cfg);
      again.restore(loader.state());
    }
  }
}

void run_jsonl_index(const uint8_t* data, size_t size) {
  ensure_shard();
  const std::string path = put("index.jsonl", data, size);
  guarded("jsonl_index", {"index.jsonl", "a.safetensors"}, [&] { walk_index(path); });
  guarded("jsonl_index", {"index.jsonl"}, [&] {
    if (train::is_audio_jsonl(path)) {
      for (const auto& e : train::read_audio_index(path)) (void)e.path.size();
    }
  });
  guarded("jsonl_index", {"index.jsonl"}, [&] { train::read_audio_index(path); });
}

void run_alignments(const uint8_t* data, size_t size) {
  const std::string path = put("input.json", data, size);
  guarded("alignments", {"input.json"}, [&] {
    const auto words = text::parse_alignments_json(path);
    const auto sel = text::select_alignments(words, 0.0, 10.0);
    // Tokens from the word's bytes (1..4 of them), as a stand-in for the SentencePiece model.
    auto tokenize = [](const std::string& w) {
      std::vector<int> t;
      for (size_t i = 0; i < w.size() && i < 4; ++i) t.push_back(4 + static_cast<unsigned char>(w[i]));
      if (t.empty()) t.push_back(4);
      return t;
    };
    const auto stream = text::build_token_stream(sel, 125, tokenize);
    if (stream.size() != 125) g_handler("alignments: token stream of the wrong length");
    text::InterleaverConfig other;
    other.keep_main_only = false;
    text::build_token_stream(text::select_alignments(words, 2.5, 4.0), 50, tokenize, other);
  });
}

void run_wav(const uint8_t* data, size_t size) {
  const std::string path = put("input.wav", data, size);
  guarded("wav", {"input.wav"}, [&] {
    const audio::Audio a = audio::read_audio(path);
    if (a.channels() < 1 || a.frames() < 1 || a.sample_rate < 1) g_handler("wav: an empty Audio was returned");
    audio::read_audio_24k(path);
  });
}

void run_codes(const uint8_t* data, size_t size) {
  const std::string path = put("codes.safetensors", data, size);
  guarded("codes", {"codes.safetensors"}, [&] {
    const at::Tensor c = io::read_codes(path);
    if (c.dim() != 3 || c.scalar_type() != at::kLong) g_handler("codes: read_codes returned a bad tensor");
  });
  // The same bytes as the shard of a token dataset.
  static const std::string index =
      put("codes_index.jsonl", std::string("{\"path\": \"codes.safetensors\", \"file_id\": \"c\"}\n"));
  guarded("codes", {"codes.safetensors", "codes_index.jsonl", "\"c\""}, [&] { walk_index(index); });
}

}  // namespace

const std::vector<Target>& targets() {
  static const std::vector<Target> t = {
      {"safetensors", "input.safetensors", run_safetensors},
      {"yaml_config", "input.yaml", run_yaml_config},
      {"jsonl_index", "index.jsonl", run_jsonl_index},
      {"alignments", "input.json", run_alignments},
      {"wav", "input.wav", run_wav},
      {"codes", "codes.safetensors", run_codes},
  };
  return t;
}

const Target& target(const std::string& name) {
  for (const auto& t : targets())
    if (name == t.name) return t;
  throw std::invalid_argument("unknown fuzz target '" + name + "'");
}

void guarded(const char* target, const std::vector<std::string>& names, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const mt::Error& e) {
    const std::string msg = e.what();
    bool named = false;
    for (const auto& n : names) named = named || msg.find(n) != std::string::npos;
    if (!named) g_handler(std::string(target) + ": an error that names none of the input files: " + msg);
  } catch (const std::exception& e) {
    g_handler(std::string(target) + ": " + typeid(e).name() + " escaped instead of mt::Error: " + e.what());
  } catch (...) {
    g_handler(std::string(target) + ": a non-std exception escaped");
  }
}

void set_finding_handler(FindingHandler h) { g_handler = h ? h : abort_on_finding; }

int write_seeds(const std::string& dir) {
  int n = 0;
  auto dir_of = [&](const char* t) {
    fs::path d = fs::path(dir) / t;
    fs::create_directories(d);
    return d;
  };
  auto put_seed = [&](const fs::path& p, const std::string& bytes) {
    atomic_write(p.string(), bytes);
    ++n;
  };
  at::Generator g = at::detail::createCPUGenerator(7);
  {
    const fs::path d = dir_of("safetensors");
    put_seed(d / "dtypes.safetensors", io::to_bytes({{"w", at::randn({3, 4}, g)},
                                                     {"h", at::randn({2}, g).to(at::kHalf)},
                                                     {"b", at::randn({5}, g).to(at::kBFloat16)},
                                                     {"i", at::arange(6, at::kLong).view({2, 3})},
                                                     {"m", at::ones({4}, at::kBool)},
                                                     {"s", at::zeros({0, 3})}},
                                                    {{"format", "pt"}, {"note", "seed"}}));
    put_seed(d / "scalar.safetensors", io::to_bytes({{"x", at::tensor(1.5)}}));
    put_seed(d / "empty.safetensors", io::to_bytes({}));
  }
  {
    const fs::path d = dir_of("yaml_config");
    put_seed(d / "hybrid.yaml",
             "preset: tiny\nttt:\n  enable: true\n  variant: hybrid\n  layers: \"1\"\n  type: linear\n"
             "  mini_batch_size: 8\n  base_lr: 1.0\nrun_dir: run\ndata:\n  train_data: data/index.jsonl\n"
             "  shuffle: true\nduration_sec: 1.6\nbatch_size: 2\nmax_steps: 6\nseed: 1\n"
             "optim:\n  lr: 0.002\n  pct_start: 0.3\nparam_dtype: float32\nlog_freq: 1\n");
    put_seed(d / "lora.yaml",
             "preset: tiny\nlora:\n  enable: true\n  rank: 4\n  scaling: 2.0\n  targets: [transformer.layers.0.]\n"
             "run_dir: r\ndata: {train_data: x.jsonl, eval_data: y.jsonl}\ndo_eval: true\neval_freq: 2\n");
    put_seed(d / "inplace.yaml",
             "preset: tiny\nttt: {enable: true, variant: inplace, layers: \"0,1\"}\nfull_finetuning: false\n"
             "run_dir: r\ndata: {train_data: x.jsonl}\nmax_steps: 1\n");
  }
  {
    const fs::path d = dir_of("jsonl_index");
    put_seed(d / "tokens.jsonl", "{\"path\": \"a.safetensors\", \"file_id\": \"a\"}\n");
    put_seed(
        d / "tokens2.jsonl",
        "{\"path\": \"a.safetensors\", \"file_id\": \"a\"}\n\n{\"path\": \"./a.safetensors\", \"file_id\": \"b\"}\n");
    put_seed(d / "audio.jsonl",
             "{\"path\": \"x.wav\", \"duration\": 12.5}\n{\"path\": \"/abs/y.wav\", \"duration\": 0.08}\n");
  }
  {
    const fs::path d = dir_of("alignments");
    put_seed(d / "words.json",
             "{\"alignments\": [[\"hello\", [0.1, 0.5], \"SPEAKER_MAIN\"], [\"there\", [0.6, 0.9], \"SPEAKER_MAIN\"],"
             " [\"other\", [0.7, 1.2], \"SPEAKER_1\"], [\"late\", [9.5, 11.0], \"SPEAKER_MAIN\"]], \"text\": \"x\"}");
    put_seed(d / "empty.json", "{\"alignments\": []}");
  }
  {
    const fs::path d = dir_of("wav");
    const fs::path tmp = fs::path(dir) / "tmp.wav";
    auto add = [&](const std::string& name, const at::Tensor& x, int64_t rate, audio::WavFormat fmt) {
      audio::write_wav(tmp.string(), x, rate, fmt);
      std::ifstream f(tmp, std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      put_seed(d / name, bytes);
      fs::remove(tmp);
    };
    add("mono16k.wav", 0.3 * at::randn({1, 400}, g), 16000, audio::WavFormat::Pcm16);
    add("stereo24k_float.wav", 0.3 * at::randn({2, 240}, g), 24000, audio::WavFormat::Float32);
    add("mono8k.wav", 0.3 * at::randn({1, 64}, g), 8000, audio::WavFormat::Pcm16);
  }
  {
    const fs::path d = dir_of("codes");
    put_seed(d / "kt.safetensors", io::to_bytes({{"codes", at::randint(-1, 64, {3, 40}, g, at::kLong)}}));
    put_seed(d / "ckt_i32.safetensors", io::to_bytes({{"codes", at::randint(0, 2048, {2, 8, 5}, g, at::kInt)}}));
    put_seed(d / "kt_i16.safetensors",
             io::to_bytes({{"codes", at::randint(0, 64, {3, 20}, g, at::kShort)}}, {{"source", "x.wav"}}));
  }
  return n;
}

}  // namespace mt::fuzz
