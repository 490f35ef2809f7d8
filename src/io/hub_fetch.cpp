// The network side of the hub cache: the HEAD that names a file's commit, etag and size, and the GET
// of its bytes into blobs/<etag>.incomplete (resumed with Range, size and hash checked), then moved
// into the Python client's layout. One lock per blob (the Python client's lock file, so both tools
// exclude each other) keeps two downloaders of one file from writing the same part file.
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "io/http_client.h"
#include "io/hub_internal.h"
#include "util/error.h"

namespace mt::io::hub {

namespace fs = std::filesystem;

namespace {

constexpr int kMaxRedirects = 10;

// ---------------------------------------------------------------------------------------------
// Hashes: a 64-hex etag is the SHA-256 of an LFS file, a 40-hex one git's blob id of a small file.

class Digest {
 public:
  explicit Digest(const EVP_MD* md) : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    MT_CHECK(ctx_ && EVP_DigestInit_ex(ctx_.get(), md, nullptr) == 1, "OpenSSL: cannot start a digest");
  }
  void update(const char* p, size_t n) { EVP_DigestUpdate(ctx_.get(), p, n); }
  std::string hex() {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx_.get(), d, &n);
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < n; ++i) (out += digits[d[i] >> 4]) += digits[d[i] & 15];
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

bool all_hex(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

// The digest `etag` names, primed as git primes a blob's; nullptr when the etag is neither form (then
// only the size is checked) or a git id whose size is not known yet.
std::unique_ptr<Digest> digest_for(const std::string& etag, int64_t size) {
  if (etag.size() == 64 && all_hex(etag)) return std::make_unique<Digest>(EVP_sha256());
  if (etag.size() != 40 || !all_hex(etag) || size < 0) return nullptr;
  auto d = std::make_unique<Digest>(EVP_sha1());
  const std::string header = "blob " + std::to_string(size);
  d->update(header.c_str(), header.size() + 1);  // with its NUL
  return d;
}

// Feeds the first `n` bytes of a file (a part file's earlier download) into the digest.
void feed_file(Digest& d, const std::string& path, int64_t n) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  MT_CHECK(f, path, ": cannot read: ", std::strerror(errno));
  std::vector<char> buf(1 << 20);
  while (n > 0) {
    const size_t got = std::fread(buf.data(), 1, std::min<int64_t>(n, int64_t(buf.size())), f);
    if (got == 0) break;
    d.update(buf.data(), got);
    n -= int64_t(got);
  }
  std::fclose(f);
  MT_CHECK(n == 0, path, ": shorter than expected while hashing it");
}

// ---------------------------------------------------------------------------------------------
// Files

// An exclusive flock held for the object's life; waits for another process's download of the blob.
class FileLock {
 public:
  explicit FileLock(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    MT_CHECK(fd_ >= 0, path, ": cannot create the lock file: ", std::strerror(errno));
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd_);
      fail(path, ": cannot lock: ", std::strerror(e));
    }
  }
  ~FileLock() { ::close(fd_); }  // closing releases the lock
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

void make_dirs(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  MT_CHECK(!ec, dir.string(), ": cannot create the hub cache folder: ", ec.message());
}

// A unique name beside `path` for a temporary that is then renamed over it.
std::string temp_beside(const fs::path& path) {
  static std::atomic<uint64_t> counter{0};
  return str(path.string(), ".tmp.", ::getpid(), ".", counter.fetch_add(1));
}

// snapshots/<commit>/<file> -> ../../blobs/<etag> (one more ../ per folder in the file name), made
// under a temporary name and renamed over the old one, so a reader never sees the file missing.
void link_snapshot(const fs::path& pointer, const std::string& filename, const std::string& etag) {
  std::string target = "../../";
  for (char c : filename)
    if (c == '/') target += "../";
  target += "blobs/" + etag;
  const std::string tmp = temp_beside(pointer);
  MT_CHECK(::symlink(target.c_str(), tmp.c_str()) == 0, tmp, ": cannot create a symlink: ", std::strerror(errno));
  if (::rename(tmp.c_str(), pointer.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    fail(pointer.string(), ": cannot move the snapshot link into place: ", std::strerror(e));
  }
}

void write_all(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    MT_CHECK(w > 0, path, ": write failed: ", std::strerror(errno));
    p += w;
    n -= size_t(w);
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP

bool is_redirect(int status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

// Where the token may go: the same origin, or the hub's own (as the Python client decides).
bool keeps_auth(const http::Url& from, const http::Url& to) {
  const std::string o = to.origin();
  return o == from.origin() || o == "https://huggingface.co:443" || o == "https://hf.co:443";
}

void drop_auth(http::Headers& h) {
  std::erase_if(h, [](const auto& kv) { return kv.first == "authorization"; });
}

http::Headers hub_headers(const Settings& s) {
  http::Headers h{{"user-agent", "moshi-ttt (hub cache compatible with huggingface_hub)"},
                  {"accept-encoding", "identity"}};  // sizes and hashes are of the stored bytes
  if (!s.token.empty()) h.emplace_back("authorization", "Bearer " + s.token);
  return h;
}

int64_t to_int(const std::string& v) {
  if (v.empty() || !std::all_of(v.begin(), v.end(), [](char c) { return std::isdigit((unsigned char)c); })) return -1;
  return std::stoll(v);
}

// ETag: W/"abc" -> abc (as huggingface_hub's _normalize_etag).
std::string normalize_etag(std::string e) {
  while (!e.empty() && (e[0] == 'W' || e[0] == '/')) e.erase(0, 1);
  while (!e.empty() && e.front() == '"') e.erase(0, 1);
  while (!e.empty() && e.back() == '"') e.pop_back();
  return e;
}

struct Meta {
  int status = 0;
  std::string commit, etag, error_code, url;
  int64_t size = -1;
  http::Url location;     // where the GET goes
  http::Headers headers;  // for the GET: without the token when the location is off the hub
};

Meta meta_of(const http::Response& r, const http::Url& url, const http::Url& location, http::Headers headers) {
  Meta m;
  m.status = r.status;
  m.url = url.str();
  m.commit = r.header("x-repo-commit");
  const std::string linked = r.header("x-linked-etag");
  m.etag = normalize_etag(linked.empty() ? r.header("etag") : linked);
  const std::string size = r.header("x-linked-size");
  m.size = to_int(!size.empty() ? size : is_redirect(r.status) ? "" : r.header("content-length"));
  m.error_code = r.header("x-error-code");
  m.location = location;
  if (!keeps_auth(url, location)) drop_auth(headers);
  m.headers = std::move(headers);
  return m;
}

// HEAD {endpoint}/{repo}/resolve/{revision}/{file}, following redirects that stay on the hub (a renamed
// repo); one that leaves it (the LFS CDN) carries the metadata and names where the GET goes.
Meta fetch_metadata(const FileRef& ref, const Settings& s) {
  http::Url url = http::parse_url(file_url(ref, s.endpoint));
  const http::Headers headers = hub_headers(s);
  for (int hop = 0; hop < kMaxRedirects; ++hop) {
    http::Request req(url, s.metadata_timeout_s, s.metadata_timeout_s);
    const http::Response r = req.head(headers);
    const std::string loc = r.header("location");
    if (!is_redirect(r.status) || loc.empty()) return meta_of(r, url, url, headers);
    const http::Url next = http::join_url(url, loc);
    if (!keeps_auth(url, next)) return meta_of(r, url, next, headers);
    url = next;
  }
  fail(file_url(ref, s.endpoint), ": more than ", kMaxRedirects, " redirects");
}

std::string denied_text(int status) {
  return str(status, " (gated or private repo: set HF_TOKEN or log in with `huggingface-cli login`",
             status == 403 ? ", and accept the repo's conditions on its page" : "", ")");
}

// ---------------------------------------------------------------------------------------------
// The transfer of one blob into its part file

struct Transfer {
  const Settings& s;
  std::string what;  // repo/file, for messages and progress
  std::string etag, part;
  int64_t expected = -1;  // bytes in all, -1 when the hub did not say
  http::Url url;
  http::Headers headers;
  int fd = -1;
  int64_t have = 0;
  std::unique_ptr<Digest> digest;

  // Back to an empty part file: the server sent the whole file instead of the asked range.
  void restart() {
    MT_CHECK(::ftruncate(fd, 0) == 0 && ::lseek(fd, 0, SEEK_SET) == 0, part,
             ": cannot truncate: ", std::strerror(errno));
    have = 0;
    digest = digest_for(etag, expected);
  }
  void report() const {
    if (s.progress) s.progress(what, have, expected);
  }
};

// The body of an answered GET, appended to the part file; true when it reached its announced end.
bool stream_body(http::Request& req, Transfer& t) {
  std::vector<char> buf(1 << 20);
  t.report();
  for (size_t n; (n = req.read_body(buf.data(), buf.size())) > 0;) {
    MT_CHECK(t.expected < 0 || t.have + int64_t(n) <= t.expected, t.what, ": the server sent more than the ",
             t.expected, " bytes it announced");
    write_all(t.fd, buf.data(), n, t.part);
    if (t.digest) t.digest->update(buf.data(), n);
    t.have += int64_t(n);
    t.report();
  }
  return t.expected < 0 || t.have == t.expected;
}

// One GET (following redirects, Range from what the part file holds); true once the file is whole.
// Throws http::NetError when the connection drops, so that the caller resumes.
bool get_once(Transfer& t) {
  for (int hop = 0; hop < kMaxRedirects; ++hop) {
    http::Headers h = t.headers;
    if (t.have > 0) h.emplace_back("range", str("bytes=", t.have, "-"));
    http::Request req(t.url, t.s.download_timeout_s, t.s.download_timeout_s);
    const http::Response r = req.get(h);
    const std::string loc = r.header("location");
    if (is_redirect(r.status) && !loc.empty()) {
      const http::Url next = http::join_url(t.url, loc);
      if (!keeps_auth(t.url, next)) drop_auth(t.headers);
      t.url = next;
      continue;
    }
    if (r.status == 416 && t.have == t.expected) return true;  // the part file was already whole
    if ((r.status == 200 && t.have > 0) || r.status == 416) {
      t.restart();
      if (r.status == 416) throw http::NetError(str(t.url.str(), ": range not satisfiable; starting again"));
    } else if (r.status == 206) {
      const std::string range = r.header("content-range");  // "bytes START-END/TOTAL"
      if (range.rfind(str("bytes ", t.have, "-"), 0) != 0) {
        t.restart();
        throw http::NetError(str(t.url.str(), ": asked from byte ", t.have, ", got '", range, "'; starting again"));
      }
    } else if (r.status == 401 || r.status == 403) {
      fail(t.what, ": download refused: ", denied_text(r.status), " at ", t.url.str());
    } else if (r.status != 200) {
      fail(t.what, ": download failed: HTTP ", r.status, " from ", t.url.str());
    }
    return stream_body(req, t);
  }
  fail(t.what, ": more than ", kMaxRedirects, " redirects from ", t.url.str());
}

// Downloads until whole, resuming a dropped connection up to max_resumes times.
void transfer(Transfer& t) {
  for (int resumes = 0;; ++resumes) {
    try {
      if (get_once(t)) return;
      throw http::NetError(str("the body ended at byte ", t.have, " of ", t.expected));
    } catch (const http::NetError& e) {
      if (resumes >= t.s.max_resumes)
        fail(t.what, ": download failed after ", resumes, " resumes (", e.what(), "); ", t.have, " bytes kept in ",
             t.part, " for the next try");
    }
  }
}

void check_hash(Transfer& t) {
  if (!t.digest && t.etag.size() == 40) {  // a git id whose size the hub did not announce
    t.digest = digest_for(t.etag, t.have);
    if (t.digest) feed_file(*t.digest, t.part, t.have);
  }
  if (!t.digest) return;
  const std::string got = t.digest->hex();
  if (got == t.etag) return;
  ::unlink(t.part.c_str());
  fail(t.what, ": the downloaded bytes do not match the hub's hash (", t.etag.size() == 64 ? "sha256" : "git sha1",
       "): expected ", t.etag, ", got ", got, "; the partial file was removed");
}

// blobs/<etag> from the GET, through blobs/<etag>.incomplete (kept for a resume when the transfer fails).
void fetch_blob(const Settings& s, const Meta& m, const std::string& what, const fs::path& blob) {
  Transfer t{s, what, m.etag, blob.string() + ".incomplete", m.size, m.location, m.headers, -1, 0, nullptr};
  t.fd = ::open(t.part.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  MT_CHECK(t.fd >= 0, t.part, ": cannot create: ", std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{t.fd};
  t.have = ::lseek(t.fd, 0, SEEK_END);
  if (t.expected >= 0 && t.have > t.expected) t.restart();
  t.digest = digest_for(t.etag, t.expected);
  if (t.digest && t.have > 0) feed_file(*t.digest, t.part, t.have);
  transfer(t);
  MT_CHECK(::fsync(t.fd) == 0, t.part, ": fsync failed: ", std::strerror(errno));
  check_hash(t);
  MT_CHECK(::rename(t.part.c_str(), blob.c_str()) == 0, blob.string(),
           ": cannot move the download into place: ", std::strerror(errno));
}

// ---------------------------------------------------------------------------------------------
// The whole lookup

// A 404: the Python client's .no_exist marker (and the ref) when the hub named the commit.
void record_absent(const FileRef& ref, const Meta& m, const std::string& repo_dir) {
  if (!is_commit(m.commit)) return;
  const fs::path marker = fs::path(repo_dir) / ".no_exist" / m.commit / ref.filename;
  make_dirs(marker.parent_path());
  const std::string tmp = temp_beside(marker);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MT_CHECK(fd >= 0, marker.string(), ": cannot create: ", std::strerror(errno));
  ::close(fd);
  MT_CHECK(::rename(tmp.c_str(), marker.c_str()) == 0, marker.string(), ": cannot create: ", std::strerror(errno));
  write_ref(repo_dir, ref.revision, m.commit);
}

// The answer to the HEAD, checked: an mt::Error naming the file and the reason unless it found the file.
void check_metadata(const Meta& m, const std::string& what) {
  if (m.status == 401 || m.status == 403) fail(what, ": ", denied_text(m.status), " at ", m.url);
  if (m.status == 404)
    fail(what, ": ", m.error_code == "RevisionNotFound" ? "no such revision" : "no such repo", " (404 at ", m.url, ")");
  MT_CHECK(m.status / 100 == 2 || is_redirect(m.status), what, ": HTTP ", m.status, " from ", m.url);
  MT_CHECK(is_commit(m.commit), what, ": the answer from ", m.url,
           " has no X-Repo-Commit header: HF_ENDPOINT does not point at a Hugging Face hub");
  MT_CHECK(!m.etag.empty() && m.etag.find('/') == std::string::npos && m.etag[0] != '.', what, ": the answer from ",
           m.url, " has no usable ETag ('", m.etag, "')");
}

std::string place(const FileRef& ref, const Settings& s, const Meta& m, const std::string& what) {
  const fs::path repo_dir = fs::path(s.cache_dir) / repo_folder_name(ref);
  const fs::path pointer = repo_dir / "snapshots" / m.commit / ref.filename;
  const fs::path blob = repo_dir / "blobs" / m.etag;
  std::error_code ec;
  if (fs::is_regular_file(pointer, ec)) return pointer.string();  // another revision already had it
  make_dirs(blob.parent_path());
  make_dirs(pointer.parent_path());
  const fs::path locks = fs::path(s.cache_dir) / ".locks" / repo_folder_name(ref);
  make_dirs(locks);
  FileLock lock((locks / (m.etag + ".lock")).string());
  if (!fs::is_regular_file(blob, ec)) fetch_blob(s, m, what, blob);
  link_snapshot(pointer, ref.filename, m.etag);
  return pointer.string();
}

}  // namespace

std::optional<std::string> fetch(const FileRef& ref, const Settings& s, Absent absent) {
  validate(ref, "hub download");
  MT_CHECK(!s.cache_dir.empty(), "hub download: no cache folder (set HF_HUB_CACHE or HF_HOME)");
  const std::string repo_dir = s.cache_dir + "/" + repo_folder_name(ref);
  const std::string what = str(ref.repo_type == "model" ? "" : ref.repo_type + " ", ref.repo_id, "/", ref.filename,
                               ref.revision == "main" ? "" : " at " + ref.revision);
  if (std::string p = cached(ref, s.cache_dir); !p.empty()) return p;
  if (absent == Absent::kNullopt && known_absent(ref, s.cache_dir)) return std::nullopt;
  MT_CHECK(!s.offline, what, ": not in the hub cache ", repo_dir,
           ", and offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)");
  Meta m;
  try {
    m = fetch_metadata(ref, s);
  } catch (const http::NetError& e) {
    fail(what, ": cannot reach the hub at ", s.endpoint, " (", e.what(), ") and the file is not in the cache ",
         repo_dir);
  }
  if (m.status == 404 && m.error_code != "RepoNotFound" && m.error_code != "RevisionNotFound") {
    record_absent(ref, m, repo_dir);
    if (absent == Absent::kNullopt) return std::nullopt;
    fail(what, ": no such file in the repo (404 at ", m.url, ")");
  }
  check_metadata(m, what);
  write_ref(repo_dir, ref.revision, m.commit);
  return place(ref, s, m, what);
}

}  // namespace mt::io::hub
