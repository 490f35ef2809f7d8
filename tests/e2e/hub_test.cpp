// Hub downloads against a loopback fake hub (tests/e2e/fake_hub.py: the hub's URLs and headers, an LFS
// CDN on another origin, fault switches), and interop with the Python hub client's cache when a Python
// with huggingface_hub is at hand. Never contacts huggingface.co.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include "io/hub.h"
#include "test_util.h"
#include "util/atomic_file.h"

namespace hub = mt::io::hub;
namespace fs = std::filesystem;
using mt::test::expect_error;
using mt::test::slurp;
using mt::test::TempDir;

namespace {

const std::string kCommit = "0123456789abcdef0123456789abcdef01234567";

// fake_hub.py as a child process, killed with the test (parent-death signal) or by the destructor.
class FakeHub {
 public:
  FakeHub() = default;
  FakeHub(const FakeHub&) = delete;
  FakeHub& operator=(const FakeHub&) = delete;
  ~FakeHub() { stop(); }

  // "" once it prints its port, else why.
  std::string start(const std::string& root, const std::vector<std::string>& flags, const std::string& out_file) {
    std::vector<std::string> all{"python3", std::string(MT_SOURCE_DIR) + "/tests/e2e/fake_hub.py", root};
    all.insert(all.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    // A restarted server reuses the file: remove the old one first, or its port is read before the
    // child truncates it (a race that showed under load).
    ::unlink(out_file.c_str());
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) return std::string("fork: ") + std::strerror(errno);
    if (pid_ == 0) {  // the child: async-signal-safe calls only until exec
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      const int out = ::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (out < 0) ::_exit(127);
      ::dup2(out, 1);
      ::dup2(out, 2);
      ::close_range(3, ~0U, 0);
      ::execvp(argv[0], argv.data());
      ::_exit(127);
    }
    for (int i = 0; i < 1000; ++i) {  // up to 20 s
      const std::string text = slurp(out_file);
      if (text.find('\n') != std::string::npos) {
        port_ = std::atoi(text.c_str());
        return port_ > 0 ? "" : "fake_hub.py said: " + text;
      }
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return "fake_hub.py exited: " + slurp(out_file);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return "fake_hub.py did not start: " + slurp(out_file);
  }
  std::string endpoint(const char* scheme = "http") const {
    return std::string(scheme) + "://127.0.0.1:" + std::to_string(port_);
  }
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

// Deterministic bytes (a test needs no randomness to tell a resumed file from a whole one).
std::string bytes_of(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    s[i] = static_cast<char>(seed >> 24);
  }
  return s;
}

void put(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  mt::atomic_write(path.string(), bytes);
}

// A temp folder holding the served repos (hub/), the cache (cache/) and the server's request log.
struct HubDownload : ::testing::Test {
  TempDir tmp;
  FakeHub server;
  std::string root = tmp.file("hub"), cache = tmp.file("cache"), log = tmp.file("requests.jsonl");
  std::string config = "{\"moshi_name\": \"model.safetensors\"}\n", notes = "nested git file\n";
  std::string model = bytes_of(300000, 7);
  std::string repo_dir = cache + "/models--org--name";

  void SetUp() override {
    put(root + "/org/name/.commit", kCommit);
    put(root + "/org/name/config.json", config);
    put(root + "/org/name/sub/notes.txt", notes);
    put(root + "/org/name/model.safetensors", model);
  }
  void start(std::vector<std::string> flags = {}) {
    server.stop();
    flags.insert(flags.end(), {"--log", log});
    const std::string why = server.start(root, flags, tmp.file("server.out"));
    ASSERT_EQ(why, "");
  }
  hub::Settings settings() const {
    hub::Settings s;
    s.endpoint = server.endpoint();
    s.cache_dir = cache;
    s.progress = {};
    s.metadata_timeout_s = 5;
    s.download_timeout_s = 5;
    return s;
  }
  std::vector<nlohmann::json> requests() const {
    std::vector<nlohmann::json> out;
    std::ifstream in(log);
    for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
    return out;
  }
  std::string snapshot(const std::string& file) const { return repo_dir + "/snapshots/" + kCommit + "/" + file; }
};

std::string digest_hex(const EVP_MD* md, const std::string& bytes) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(bytes.data(), bytes.size(), d, &n, md, nullptr);
  std::string out;
  char b[3];
  for (unsigned int i = 0; i < n; ++i) out += (std::snprintf(b, sizeof b, "%02x", d[i]), b);
  return out;
}
std::string sha256_hex(const std::string& bytes) { return digest_hex(EVP_sha256(), bytes); }
std::string git_sha1_hex(const std::string& bytes) {
  return digest_hex(EVP_sha1(), "blob " + std::to_string(bytes.size()) + std::string(1, '\0') + bytes);
}

std::string link_text(const std::string& path) {
  std::error_code ec;
  return fs::read_symlink(path, ec).string();
}

}  // namespace

TEST_F(HubDownload, GitAndLfsFilesLandInThePythonClientsLayout) {
  start();
  hub::Settings s = settings();
  s.token = "tok";
  const std::string cfg = hub::download({"org/name", "config.json"}, s);
  const std::string nested = hub::download({"org/name", "sub/notes.txt"}, s);
  const std::string lfs = hub::download({"org/name", "model.safetensors"}, s);
  EXPECT_EQ(cfg, snapshot("config.json"));
  EXPECT_EQ(nested, snapshot("sub/notes.txt"));
  EXPECT_EQ(lfs, snapshot("model.safetensors"));
  EXPECT_EQ(link_text(cfg), "../../blobs/" + git_sha1_hex(config));
  EXPECT_EQ(link_text(nested), "../../../blobs/" + git_sha1_hex(notes));
  EXPECT_EQ(link_text(lfs), "../../blobs/" + sha256_hex(model));
  EXPECT_EQ(slurp(cfg), config);
  EXPECT_EQ(slurp(nested), notes);
  EXPECT_EQ(slurp(lfs), model);
  EXPECT_EQ(slurp(repo_dir + "/refs/main"), kCommit);
  std::vector<std::string> blobs;
  for (const auto& e : fs::directory_iterator(repo_dir + "/blobs")) blobs.push_back(e.path().filename().string());
  std::sort(blobs.begin(), blobs.end());
  std::vector<std::string> expected{git_sha1_hex(config), git_sha1_hex(notes), sha256_hex(model)};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(blobs, expected);  // and no .incomplete left
  // The token went to the hub, not to the CDN (which answers 400 to one); the client names itself.
  const auto reqs = requests();
  ASSERT_FALSE(reqs.empty());
  for (const auto& r : reqs) {
    if (r["server"] == "hub") EXPECT_EQ(r["authorization"], "Bearer tok") << r.dump();
    if (r["server"] == "cdn") EXPECT_TRUE(r["authorization"].is_null()) << r.dump();
    EXPECT_NE(r["user_agent"].get<std::string>().find("moshi-ttt"), std::string::npos);
  }
  // Cached now: no request for a second lookup, by branch or by commit.
  EXPECT_EQ(hub::download({"org/name", "model.safetensors"}, s), lfs);
  EXPECT_EQ(hub::download({"org/name", "config.json", kCommit}, s), cfg);
  EXPECT_EQ(requests().size(), reqs.size());
}

TEST_F(HubDownload, ResumesADroppedConnectionWithRange) {
  start({"--drop-at", "100000"});  // once
  const std::string path = hub::download({"org/name", "model.safetensors"}, settings());
  EXPECT_EQ(slurp(path), model);
  bool resumed = false;
  for (const auto& r : requests()) resumed |= r["server"] == "cdn" && r["range"] == "bytes=100000-";
  EXPECT_TRUE(resumed) << "no GET with Range: bytes=100000-";
}

TEST_F(HubDownload, SilenceLongerThanTheTimeoutCountsAsADrop) {
  start({"--drop-at", "1000", "--stall"});
  hub::Settings s = settings();
  s.download_timeout_s = 0.5;
  EXPECT_EQ(slurp(hub::download({"org/name", "model.safetensors"}, s)), model);
}

TEST_F(HubDownload, GivesUpOnAServerThatKeepsDroppingAndResumesLater) {
  start({"--drop-at", "100000", "--drop-times", "-1"});
  hub::Settings s = settings();
  s.max_resumes = 2;
  expect_error(
      [&] {
        hub::download({"org/name", "model.safetensors"}, s);
      },
      {"org/name/model.safetensors", "after 2 resumes", ".incomplete"});
  const std::string blob = repo_dir + "/blobs/" + sha256_hex(model);
  EXPECT_FALSE(fs::exists(blob));
  EXPECT_FALSE(fs::exists(fs::symlink_status(snapshot("model.safetensors"))));
  EXPECT_EQ(fs::file_size(blob + ".incomplete"), 100000u);
  start();  // a healthy server: the next try continues from byte 100000
  s.endpoint = server.endpoint();
  EXPECT_EQ(slurp(hub::download({"org/name", "model.safetensors"}, s)), model);
  EXPECT_EQ(requests().back()["range"], "bytes=100000-");
}

TEST_F(HubDownload, WrongBytesAreRefusedAndRemoved) {
  start({"--corrupt"});
  for (const std::string& file : {"model.safetensors", "config.json"}) {
    const std::string etag = file == "config.json" ? git_sha1_hex(config) : sha256_hex(model);
    expect_error(
        [&] {
          hub::download({"org/name", file}, settings());
        },
        {"org/name/" + file, "expected " + etag, "got "});
    EXPECT_FALSE(fs::exists(repo_dir + "/blobs/" + etag));
    EXPECT_FALSE(fs::exists(repo_dir + "/blobs/" + etag + ".incomplete"));
    EXPECT_FALSE(fs::exists(fs::symlink_status(snapshot(file))));
  }
}

TEST_F(HubDownload, TokenIsSentAsABearerHeader) {
  start({"--token", "s3cret"});
  hub::Settings s = settings();
  expect_error(
      [&] {
        hub::download({"org/name", "config.json"}, s);
      },
      {"org/name/config.json", "401", "gated or private", "HF_TOKEN", "huggingface-cli login"});
  s.token = "s3cret";
  EXPECT_EQ(slurp(hub::download({"org/name", "config.json"}, s)), config);
  EXPECT_EQ(slurp(hub::download({"org/name", "model.safetensors"}, s)), model);  // the CDN refuses a token
}

TEST_F(HubDownload, MissingFileIsNulloptAndRememberedOffline) {
  start();
  const hub::FileRef ref{"org/name", "absent.json"};
  EXPECT_EQ(hub::try_download(ref, settings()), std::nullopt);
  EXPECT_TRUE(fs::is_regular_file(repo_dir + "/.no_exist/" + kCommit + "/absent.json"));
  EXPECT_EQ(slurp(repo_dir + "/refs/main"), kCommit);
  expect_error([&] { hub::download(ref, settings()); }, {"org/name/absent.json", "404"});
  server.stop();  // the marker answers from now on
  EXPECT_EQ(hub::try_download(ref, settings()), std::nullopt);
  EXPECT_EQ(hub::try_download({"org/name", "absent.json", kCommit}, settings()), std::nullopt);
}

TEST_F(HubDownload, UnreachableHubUsesTheCacheElseSaysWhere) {
  start();
  const std::string cfg = hub::download({"org/name", "config.json"}, settings());
  const hub::Settings s = settings();
  server.stop();
  EXPECT_EQ(hub::download({"org/name", "config.json"}, s), cfg);
  expect_error(
      [&] {
        hub::download({"org/name", "model.safetensors"}, s);
      },
      {"org/name/model.safetensors", "cannot reach", s.endpoint, repo_dir});
}

TEST_F(HubDownload, EnvironmentPicksEndpointCacheAndOffline) {
  start();
  const std::string old_endpoint = std::getenv("HF_ENDPOINT") ? std::getenv("HF_ENDPOINT") : "";
  const std::string old_cache = std::getenv("HF_HUB_CACHE") ? std::getenv("HF_HUB_CACHE") : "";
  ::setenv("HF_ENDPOINT", server.endpoint().c_str(), 1);
  ::setenv("HF_HUB_CACHE", cache.c_str(), 1);
  ::unsetenv("HF_HUB_OFFLINE");
  ::unsetenv("TRANSFORMERS_OFFLINE");
  EXPECT_EQ(hub::resolve("hf://org/name/sub/notes.txt"), snapshot("sub/notes.txt"));
  ::setenv("HF_HUB_OFFLINE", "1", 1);
  expect_error([] { hub::resolve("hf://org/name/config.json"); }, {"org/name/config.json", repo_dir, "offline"});
  ::unsetenv("HF_HUB_OFFLINE");
  old_endpoint.empty() ? ::unsetenv("HF_ENDPOINT") : ::setenv("HF_ENDPOINT", old_endpoint.c_str(), 1);
  old_cache.empty() ? ::unsetenv("HF_HUB_CACHE") : ::setenv("HF_HUB_CACHE", old_cache.c_str(), 1);
}

TEST_F(HubDownload, FollowsARenamedReposRelativeRedirectAndDatasetRepos) {
  put(root + "/datasets/org/data/part/x.txt", "dataset file");
  start({"--rename", "old/name=org/name"});
  const std::string p = hub::download({"old/name", "config.json"}, settings());
  EXPECT_EQ(p, cache + "/models--old--name/snapshots/" + kCommit + "/config.json");  // as asked, like Python
  EXPECT_EQ(slurp(p), config);
  const std::string d = hub::download({"org/data", "part/x.txt", "main", "dataset"}, settings());
  EXPECT_EQ(d.rfind(cache + "/datasets--org--data/snapshots/", 0), 0u) << d;
  EXPECT_EQ(slurp(d), "dataset file");
}

TEST_F(HubDownload, TwoDownloadersOfOneFileShareIt) {
  start();
  std::string a, b;
  std::thread t([&] { a = hub::download({"org/name", "model.safetensors"}, settings()); });
  b = hub::download({"org/name", "model.safetensors"}, settings());
  t.join();
  EXPECT_EQ(a, b);
  EXPECT_EQ(slurp(a), model);
}

TEST_F(HubDownload, DownloadCommandPrintsOnePathPerFile) {
  start();
  const std::string env = "HF_HUB_CACHE='" + cache + "' HF_ENDPOINT=" + server.endpoint() + " HF_HUB_OFFLINE= ";
  std::string out;
  ASSERT_EQ(
      mt::test::run("{ " + env + mt::test::cli() + " download org/name config.json sub/notes.txt 2>/dev/null; }", &out),
      0)
      << out;
  EXPECT_EQ(out, snapshot("config.json") + "\n" + snapshot("sub/notes.txt") + "\n");
  // No files: Kyutai's set, the LM named by config.json (the others are missing here: a clear error).
  ASSERT_NE(mt::test::run(env + mt::test::cli() + " download org/name", &out), 0);
  EXPECT_NE(out.find("tokenizer-e351c8d8-checkpoint125.safetensors"), std::string::npos) << out;
  put(root + "/org/name/tokenizer-e351c8d8-checkpoint125.safetensors", "mimi");
  put(root + "/org/name/tokenizer_spm_32k_3.model", "spm");
  ASSERT_EQ(mt::test::run("{ " + env + mt::test::cli() + " download org/name 2>/dev/null; }", &out), 0) << out;
  EXPECT_EQ(out, snapshot("config.json") + "\n" + snapshot("model.safetensors") + "\n" +
                     snapshot("tokenizer-e351c8d8-checkpoint125.safetensors") + "\n" +
                     snapshot("tokenizer_spm_32k_3.model") + "\n");
}

// HTTPS with a self-signed certificate for 127.0.0.1: accepted when it is the CA store (SSL_CERT_FILE,
// which OpenSSL's default paths read), refused by the peer verification otherwise.
TEST_F(HubDownload, HttpsVerifiesThePeer) {
  const std::string cert = tmp.file("cert.pem"), key = tmp.file("key.pem");
  std::string out;
  if (mt::test::run("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -addext "
                    "subjectAltName=IP:127.0.0.1 -keyout '" +
                        key + "' -out '" + cert + "'",
                    &out) != 0)
    GTEST_SKIP() << "no openssl command to make a certificate: " << out;
  start({"--tls", cert, key});
  hub::Settings s = settings();
  s.endpoint = server.endpoint("https");
  const char* old = std::getenv("SSL_CERT_FILE");
  const std::string saved = old ? old : "";
  ::setenv("SSL_CERT_FILE", tmp.file("empty.pem").c_str(), 1);  // a CA store without our certificate
  mt::atomic_write(tmp.file("empty.pem"), "");
  expect_error([&] { hub::download({"org/name", "config.json"}, s); }, {"org/name/config.json", "TLS handshake"});
  ::setenv("SSL_CERT_FILE", cert.c_str(), 1);
  EXPECT_EQ(slurp(hub::download({"org/name", "config.json"}, s)), config);
  EXPECT_EQ(slurp(hub::download({"org/name", "model.safetensors"}, s)), model);
  old ? ::setenv("SSL_CERT_FILE", saved.c_str(), 1) : ::unsetenv("SSL_CERT_FILE");
}

// ---- interop with the Python hub client ------------------------------------------------------------

namespace {
// A Python with huggingface_hub: the reference venv (scripts/reference/setup_reference_env.sh), else "".
std::string hub_python() {
  std::vector<std::string> candidates;
  if (const char* c = std::getenv("MOSHI_TTT_CACHE")) candidates.push_back(std::string(c) + "/refenv/bin/python");
  if (const char* h = std::getenv("HOME")) candidates.push_back(std::string(h) + "/.cache/moshi-ttt/refenv/bin/python");
  for (const auto& c : candidates)
    if (fs::exists(c) && mt::test::run("'" + c + "' -c 'import huggingface_hub'") == 0) return c;
  return "";
}

// Runs hf_hub_download for each file (None for a missing one), printing one result per line.
int python_download(const std::string& py, const std::string& env, const std::vector<std::string>& files,
                    std::string* out) {
  std::string list;
  for (const auto& f : files) list += "'" + f + "',";
  const std::string script =
      "import sys\n"
      "from huggingface_hub import hf_hub_download, try_to_load_from_cache\n"
      "for f in [" +
      list +
      "]:\n"
      "    try:\n"
      "        print(hf_hub_download('org/name', f))\n"
      "    except Exception as e:\n"
      "        print('error', type(e).__name__)\n";
  return mt::test::run(env + " HF_HUB_DISABLE_TELEMETRY=1 '" + py + "' -c \"" + script + "\" 2>/dev/null", out);
}
}  // namespace

TEST_F(HubDownload, PythonClientReadsOurCacheOffline) {
  const std::string py = hub_python();
  if (py.empty()) GTEST_SKIP() << "no Python with huggingface_hub (scripts/reference/setup_reference_env.sh makes one)";
  start();
  for (const std::string f : {"config.json", "sub/notes.txt", "model.safetensors"})
    hub::download({"org/name", f}, settings());
  server.stop();
  std::string out;
  ASSERT_EQ(python_download(py, "HF_HUB_OFFLINE=1 HF_HUB_CACHE='" + cache + "'",
                            {"config.json", "sub/notes.txt", "model.safetensors"}, &out),
            0)
      << out;
  EXPECT_EQ(out,
            snapshot("config.json") + "\n" + snapshot("sub/notes.txt") + "\n" + snapshot("model.safetensors") + "\n");
}

TEST_F(HubDownload, WeReadThePythonClientsCacheOffline) {
  const std::string py = hub_python();
  if (py.empty()) GTEST_SKIP() << "no Python with huggingface_hub (scripts/reference/setup_reference_env.sh makes one)";
  start();
  std::string out;
  ASSERT_EQ(python_download(py, "HF_ENDPOINT=" + server.endpoint() + " HF_HUB_CACHE='" + cache + "'",
                            {"config.json", "sub/notes.txt", "model.safetensors", "absent.json"}, &out),
            0)
      << out;
  EXPECT_NE(out.find("error RemoteEntryNotFoundError"), std::string::npos) << out;
  server.stop();
  hub::Settings s = settings();
  s.offline = true;
  EXPECT_EQ(slurp(hub::download({"org/name", "config.json"}, s)), config);
  EXPECT_EQ(slurp(hub::download({"org/name", "sub/notes.txt"}, s)), notes);
  EXPECT_EQ(slurp(hub::download({"org/name", "model.safetensors", kCommit}, s)), model);
  EXPECT_EQ(hub::try_download({"org/name", "absent.json"}, s), std::nullopt);  // Python's .no_exist marker
}
