// The hub cache as the Python hub client lays it out, and the download protocol it speaks (see
// spec/interop.md section 1). The network half (metadata, blob transfer) is in hub_fetch.cpp.
#include "io/hub.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/hub_internal.h"
#include "util/atomic_file.h"
#include "util/choices.h"
#include "util/error.h"

namespace mt::io::hub {

namespace fs = std::filesystem;

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// As huggingface_hub's _is_true: 1, ON, YES, TRUE in any case.
bool env_true(const char* name) {
  std::string v = env(name);
  for (char& c : v) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return v == "1" || v == "ON" || v == "YES" || v == "TRUE";
}

double env_seconds(const char* name, double fallback) {
  const std::string v = env(name);
  if (v.empty()) return fallback;
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  MT_CHECK(end && *end == 0 && d > 0, name, "='", v, "': expected a positive number of seconds");
  return d;
}

// The first variable set to a non-empty value, else "".
std::string first_env(std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (!env(n).empty()) return env(n);
  return "";
}

std::string home_dir() {
  const std::string h = env("HOME");
  return h.empty() ? "/" : h;
}

std::string hf_home() {
  std::string h = env("HF_HOME");
  if (h.empty()) {
    const std::string xdg = env("XDG_CACHE_HOME");
    h = (xdg.empty() ? home_dir() + "/.cache" : xdg) + "/huggingface";
  }
  return expand_path(h);
}

// A token file's text: spaces and line breaks trimmed ("" when unreadable, as the Python client ignores it).
std::string read_token_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string t;
  for (char c : ss.str())
    if (c != '\r' && c != '\n') t += c;
  const size_t a = t.find_first_not_of(" \t"), b = t.find_last_not_of(" \t");
  return a == std::string::npos ? "" : t.substr(a, b - a + 1);
}

enum class RepoType { kModel, kDataset, kSpace };
const util::Choices<RepoType> kRepoTypes{
    {{"model", RepoType::kModel}, {"dataset", RepoType::kDataset}, {"space", RepoType::kSpace}}};

// Characters allowed in hub repo ids (huggingface_hub's validate_repo_id).
bool repo_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'; }

}  // namespace

std::string expand_path(const std::string& path) {
  std::string p = path;
  if (!p.empty() && p[0] == '~' && (p.size() == 1 || p[1] == '/')) p = home_dir() + p.substr(1);
  std::string out;
  for (size_t i = 0; i < p.size();) {
    if (p[i] != '$') {
      out += p[i++];
      continue;
    }
    const bool braced = i + 1 < p.size() && p[i + 1] == '{';
    size_t start = i + (braced ? 2 : 1), end = start;
    while (end < p.size() && (std::isalnum(static_cast<unsigned char>(p[end])) || p[end] == '_')) ++end;
    const bool closed = !braced || (end < p.size() && p[end] == '}');
    const char* value = end > start && closed ? std::getenv(p.substr(start, end - start).c_str()) : nullptr;
    const size_t next = end + (braced && closed ? 1 : 0);
    out += value ? std::string(value) : p.substr(i, next - i);  // unknown variables stay as written
    i = next > i ? next : i + 1;
  }
  return out;
}

Settings Settings::from_environment() {
  Settings s;
  const std::string endpoint = env("HF_ENDPOINT");
  if (!endpoint.empty()) s.endpoint = endpoint;
  while (!s.endpoint.empty() && s.endpoint.back() == '/') s.endpoint.pop_back();
  const std::string cache = first_env({"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"});
  s.cache_dir = cache.empty() ? hf_home() + "/hub" : expand_path(cache);
  s.token = first_env({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"});
  if (s.token.empty()) {
    const std::string token_path = env("HF_TOKEN_PATH");
    s.token = read_token_file(token_path.empty() ? hf_home() + "/token" : expand_path(token_path));
  }
  s.offline = env_true("HF_HUB_OFFLINE") || env_true("TRANSFORMERS_OFFLINE");
  s.metadata_timeout_s = env_seconds("HF_HUB_ETAG_TIMEOUT", s.metadata_timeout_s);
  s.download_timeout_s = env_seconds("HF_HUB_DOWNLOAD_TIMEOUT", s.download_timeout_s);
  return s;
}

bool is_hub_path(const std::string& path) { return path.rfind("hf://", 0) == 0; }
bool is_file_url(const std::string& path) { return path.rfind("file://", 0) == 0; }

FileRef parse_hub_path(const std::string& path) {
  MT_CHECK(is_hub_path(path), "'", path, "' is not a hub path (expected hf://org/repo/path/in/repo)");
  const std::string rest = path.substr(5);
  const size_t a = rest.find('/'), b = a == std::string::npos ? a : rest.find('/', a + 1);
  MT_CHECK(a != std::string::npos && b != std::string::npos && a > 0 && b > a + 1 && b + 1 < rest.size(), "'", path,
           "': expected hf://org/repo/path/in/repo");
  FileRef ref;
  ref.repo_id = rest.substr(0, b);
  ref.filename = rest.substr(b + 1);
  if (const size_t at = ref.repo_id.find('@'); at != std::string::npos) {
    ref.revision = ref.repo_id.substr(at + 1);
    ref.repo_id.resize(at);
  }
  validate(ref, path);
  return ref;
}

void validate(const FileRef& ref, const std::string& context) {
  const std::string& id = ref.repo_id;
  const size_t slash = id.find('/');
  bool ok = !id.empty() && std::all_of(id.begin(), id.end(), [](char c) { return repo_char(c) || c == '/'; }) &&
            id.find('/', slash == std::string::npos ? id.size() : slash + 1) == std::string::npos &&
            id.find("--") == std::string::npos && id.find("..") == std::string::npos && id.front() != '/' &&
            id.back() != '/';
  MT_CHECK(ok, context, ": bad repo id '", id, "' (expected org/name of letters, digits, '-', '_', '.')");
  const std::string f = "/" + ref.filename + "/";
  MT_CHECK(!ref.filename.empty() && ref.filename[0] != '/' && f.find("/../") == std::string::npos &&
               f.find("/./") == std::string::npos && f.find("//") == std::string::npos,
           context, ": bad file name '", ref.filename, "' in ", id, " (a relative path inside the repo)");
  const std::string r = "/" + ref.revision + "/";
  MT_CHECK(!ref.revision.empty() && r.find("/../") == std::string::npos && r.find("/./") == std::string::npos &&
               r.find("//") == std::string::npos,
           context, ": bad revision '", ref.revision, "'");
  kRepoTypes.parse(ref.repo_type, context + ": repo type");
}

std::string repo_folder_name(const FileRef& ref) {
  std::string name = ref.repo_type + "s--" + ref.repo_id;
  for (size_t i = 0; (i = name.find('/', i)) != std::string::npos;) name.replace(i, 1, "--");
  return name;
}

std::string quote(const std::string& s, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    // Python's urllib.parse.quote: letters, digits and "_.-~" stay (and '/' when it is "safe").
    if (std::isalnum(c) || c == '_' || c == '.' || c == '-' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string file_url(const FileRef& ref, const std::string& endpoint) {
  const RepoType type = kRepoTypes.parse(ref.repo_type, "repo type");
  const std::string prefix = type == RepoType::kDataset ? "datasets/" : type == RepoType::kSpace ? "spaces/" : "";
  std::string base = endpoint;
  while (!base.empty() && base.back() == '/') base.pop_back();
  return base + "/" + prefix + ref.repo_id + "/resolve/" + quote(ref.revision, false) + "/" + quote(ref.filename, true);
}

bool is_commit(const std::string& revision) {
  return revision.size() == 40 && std::all_of(revision.begin(), revision.end(), [](char c) {
           return std::isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'f');
         });
}

std::string read_ref(const std::string& repo_dir, const std::string& revision) {
  if (is_commit(revision)) return revision;
  std::ifstream in(repo_dir + "/refs/" + revision);
  std::string commit;
  std::getline(in, commit);
  return is_commit(commit) ? commit : "";
}

void write_ref(const std::string& repo_dir, const std::string& revision, const std::string& commit) {
  if (revision == commit || read_ref(repo_dir, revision) == commit) return;  // a read-only cache stays usable
  const fs::path path = fs::path(repo_dir) / "refs" / revision;
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  MT_CHECK(!ec, path.parent_path().string(), ": cannot create the hub cache folder: ", ec.message());
  atomic_write(path.string(), commit);
}

std::string cached(const FileRef& ref, const std::string& cache_dir) {
  validate(ref, "hub cache lookup");
  const std::string repo_dir = cache_dir + "/" + repo_folder_name(ref);
  const std::string commit = read_ref(repo_dir, ref.revision);
  if (commit.empty()) return "";
  const std::string path = repo_dir + "/snapshots/" + commit + "/" + ref.filename;
  std::error_code ec;
  return fs::is_regular_file(path, ec) ? path : "";  // follows the symlink: a dangling one is not a file
}

bool known_absent(const FileRef& ref, const std::string& cache_dir) {
  const std::string repo_dir = cache_dir + "/" + repo_folder_name(ref);
  const std::string commit = read_ref(repo_dir, ref.revision);
  std::error_code ec;
  return !commit.empty() && fs::exists(repo_dir + "/.no_exist/" + commit + "/" + ref.filename, ec);
}

std::optional<std::string> try_download(const FileRef& ref, const Settings& s) {
  return fetch(ref, s, Absent::kNullopt);
}

std::string download(const FileRef& ref, const Settings& s) { return *fetch(ref, s, Absent::kThrow); }

std::string resolve(const std::string& path, const Settings& s) {
  if (is_hub_path(path)) return download(parse_hub_path(path), s);
  if (is_file_url(path)) return path.substr(7);
  return path;
}

std::string resolve(const std::string& path) {
  return is_hub_path(path) ? resolve(path, Settings::from_environment()) : resolve(path, Settings{});
}

}  // namespace mt::io::hub
