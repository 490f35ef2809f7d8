// The hub cache's pure parts: where the cache is (the Python client's precedence of environment
// variables), path forms, URL quoting and the folder layout; offline lookups in a hand-made cache.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>

#include "io/http_client.h"
#include "io/hub.h"
#include "test_util.h"
#include "util/atomic_file.h"

namespace hub = mt::io::hub;
namespace fs = std::filesystem;

namespace {

// Sets environment variables for one test and puts the old values back.
class EnvGuard {
 public:
  void set(const std::string& name, const std::optional<std::string>& value) {
    if (!saved_.count(name)) {
      const char* old = std::getenv(name.c_str());
      saved_[name] = old ? std::optional<std::string>(old) : std::nullopt;
    }
    if (value)
      ::setenv(name.c_str(), value->c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
  ~EnvGuard() {
    for (const auto& [k, v] : saved_) {
      if (v)
        ::setenv(k.c_str(), v->c_str(), 1);
      else
        ::unsetenv(k.c_str());
    }
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

const char* kCacheVars[] = {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"};

}  // namespace

TEST(Hub, CacheFolderFollowsThePythonClientsPrecedence) {
  EnvGuard env;
  for (const char* v : kCacheVars) env.set(v, std::nullopt);
  env.set("HOME", "/home/u");
  EXPECT_EQ(hub::Settings::from_environment().cache_dir, "/home/u/.cache/huggingface/hub");
  env.set("XDG_CACHE_HOME", "/xdg");
  EXPECT_EQ(hub::Settings::from_environment().cache_dir, "/xdg/huggingface/hub");
  env.set("HF_HOME", "~/hf");
  EXPECT_EQ(hub::Settings::from_environment().cache_dir, "/home/u/hf/hub");
  env.set("HUGGINGFACE_HUB_CACHE", "/legacy");
  EXPECT_EQ(hub::Settings::from_environment().cache_dir, "/legacy");
  env.set("MT_HUB_TEST_ROOT", "/data");
  env.set("HF_HUB_CACHE", "$MT_HUB_TEST_ROOT/c/${MT_HUB_TEST_ROOT}/$MT_HUB_TEST_UNSET_VAR");
  EXPECT_EQ(hub::Settings::from_environment().cache_dir, "/data/c//data/$MT_HUB_TEST_UNSET_VAR");
}

TEST(Hub, SettingsReadEndpointTokenOfflineAndTimeouts) {
  EnvGuard env;
  mt::test::TempDir dir;
  for (const char* v : {"HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                        "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT", "HF_TOKEN_PATH"})
    env.set(v, std::nullopt);
  env.set("HF_HOME", dir.path.string());
  hub::Settings s = hub::Settings::from_environment();
  EXPECT_EQ(s.endpoint, "https://huggingface.co");
  EXPECT_EQ(s.token, "");
  EXPECT_FALSE(s.offline);
  mt::atomic_write(dir.file("token"), "  hf_file_token\n");
  EXPECT_EQ(hub::Settings::from_environment().token, "hf_file_token");
  env.set("HUGGING_FACE_HUB_TOKEN", "legacy");
  EXPECT_EQ(hub::Settings::from_environment().token, "legacy");
  env.set("HF_TOKEN", "new");
  env.set("HF_ENDPOINT", "http://127.0.0.1:9/");
  env.set("TRANSFORMERS_OFFLINE", "yes");
  env.set("HF_HUB_DOWNLOAD_TIMEOUT", "2.5");
  s = hub::Settings::from_environment();
  EXPECT_EQ(s.token, "new");
  EXPECT_EQ(s.endpoint, "http://127.0.0.1:9");
  EXPECT_TRUE(s.offline);
  EXPECT_DOUBLE_EQ(s.download_timeout_s, 2.5);
  env.set("HF_HUB_ETAG_TIMEOUT", "soon");
  mt::test::expect_error([] { hub::Settings::from_environment(); }, {"HF_HUB_ETAG_TIMEOUT", "soon"});
}

TEST(Hub, ParsesKyutaiPathForms) {
  const auto r = hub::parse_hub_path("hf://kyutai/moshiko-pytorch-bf16/sub/model.safetensors");
  EXPECT_EQ(r.repo_id, "kyutai/moshiko-pytorch-bf16");
  EXPECT_EQ(r.filename, "sub/model.safetensors");
  EXPECT_EQ(r.revision, "main");
  EXPECT_EQ(r.repo_type, "model");
  const auto at = hub::parse_hub_path("hf://kyutai/stt@v1/mimi-pytorch-e351c8d8@125.safetensors");
  EXPECT_EQ(at.repo_id, "kyutai/stt");
  EXPECT_EQ(at.revision, "v1");
  EXPECT_EQ(at.filename, "mimi-pytorch-e351c8d8@125.safetensors");
  EXPECT_TRUE(hub::is_hub_path("hf://a/b/c"));
  EXPECT_FALSE(hub::is_hub_path("/a/hf://b"));
  EXPECT_TRUE(hub::is_file_url("file:///abs"));
  for (const char* bad : {"hf://kyutai", "hf://kyutai/repo", "hf://kyutai/repo/", "hf:///repo/file", "hf://a/../b/c",
                          "hf://a/b/../../etc/passwd", "hf://a/b//c", "hf://a/b@/c", "/local/file"})
    mt::test::expect_error([&] { hub::parse_hub_path(bad); }, {bad});
}

TEST(Hub, ResolveMapsFileUrlsAndLeavesLocalPathsAlone) {
  EXPECT_EQ(hub::resolve("file:///abs/model.safetensors"), "/abs/model.safetensors");
  EXPECT_EQ(hub::resolve("file://rel/x"), "rel/x");
  EXPECT_EQ(hub::resolve("plain/path.safetensors"), "plain/path.safetensors");
}

TEST(Hub, FolderNamesAndUrlsAsThePythonClientMakesThem) {
  hub::FileRef r{"kyutai/moshiko-pytorch-bf16", "a b/c+d.json", "refs/pr/1", "model"};
  EXPECT_EQ(hub::repo_folder_name(r), "models--kyutai--moshiko-pytorch-bf16");
  EXPECT_EQ(hub::file_url(r, "https://huggingface.co/"),
            "https://huggingface.co/kyutai/moshiko-pytorch-bf16/resolve/refs%2Fpr%2F1/a%20b/c%2Bd.json");
  r.repo_type = "dataset";
  EXPECT_EQ(hub::repo_folder_name(r), "datasets--kyutai--moshiko-pytorch-bf16");
  EXPECT_EQ(hub::file_url(r, "http://h"),
            "http://h/datasets/kyutai/moshiko-pytorch-bf16/resolve/refs%2Fpr%2F1/a%20b/c%2Bd.json");
  r.repo_type = "space";
  EXPECT_EQ(hub::repo_folder_name(r), "spaces--kyutai--moshiko-pytorch-bf16");
  r.repo_type = "bucket";
  mt::test::expect_error([&] { hub::file_url(r, "http://h"); }, {"bucket", "model, dataset or space"});
}

TEST(Hub, UrlsParseAndRedirectsJoin) {
  namespace http = mt::io::http;
  const auto u = http::parse_url("https://huggingface.co/kyutai/x/resolve/main/a.json");
  EXPECT_EQ(u.origin(), "https://huggingface.co:443");
  EXPECT_EQ(u.target, "/kyutai/x/resolve/main/a.json");
  EXPECT_EQ(http::join_url(u, "/new/x/resolve/main/a.json").str(), "https://huggingface.co/new/x/resolve/main/a.json");
  EXPECT_EQ(http::join_url(u, "b.json").str(), "https://huggingface.co/kyutai/x/resolve/main/b.json");
  EXPECT_EQ(http::join_url(u, "//cdn.example/lfs/1?sig=2").str(), "https://cdn.example/lfs/1?sig=2");
  EXPECT_EQ(http::join_url(u, "http://127.0.0.1:8080/z").origin(), "http://127.0.0.1:8080");
  EXPECT_EQ(http::parse_url("http://[::1]:5/p").host, "::1");
  mt::test::expect_error([] { http::parse_url("ftp://x/y"); }, {"ftp://x/y"});
}

// A cache as the Python client writes it, read without any network.
TEST(Hub, OfflineLookupThroughRefsAndThroughACommit) {
  mt::test::TempDir cache;
  const std::string commit(40, 'a'), repo = cache.file("models--org--name");
  fs::create_directories(repo + "/blobs");
  fs::create_directories(repo + "/snapshots/" + commit + "/sub");
  fs::create_directories(repo + "/refs");
  mt::atomic_write(repo + "/blobs/e1", "hello");
  mt::atomic_write(repo + "/refs/main", commit);
  fs::create_symlink("../../../blobs/e1", repo + "/snapshots/" + commit + "/sub/f.txt");
  hub::FileRef ref{"org/name", "sub/f.txt"};
  const std::string expected = repo + "/snapshots/" + commit + "/sub/f.txt";
  EXPECT_EQ(hub::cached(ref, cache.path.string()), expected);
  ref.revision = commit;
  EXPECT_EQ(hub::cached(ref, cache.path.string()), expected);
  ref.revision = "v2";  // no ref for it
  EXPECT_EQ(hub::cached(ref, cache.path.string()), "");
  ref.revision = "main";
  ref.filename = "other.txt";
  EXPECT_EQ(hub::cached(ref, cache.path.string()), "");

  hub::Settings s;
  s.cache_dir = cache.path.string();
  s.offline = true;
  s.endpoint = "http://127.0.0.1:9";  // never contacted: offline
  EXPECT_EQ(hub::download({"org/name", "sub/f.txt"}, s), expected);
  EXPECT_EQ(mt::test::slurp(hub::resolve("hf://org/name/sub/f.txt", s)), "hello");
  mt::test::expect_error(
      [&] {
        hub::download({"org/name", "missing.bin"}, s);
      },
      {"org/name/missing.bin", repo, "HF_HUB_OFFLINE"});
  // A .no_exist marker answers try_download with no network.
  fs::create_directories(repo + "/.no_exist/" + commit);
  mt::atomic_write(repo + "/.no_exist/" + commit + "/config.json", "");
  EXPECT_EQ(hub::try_download({"org/name", "config.json"}, s), std::nullopt);
}
