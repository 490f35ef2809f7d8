#pragma once
// The Hugging Face hub cache, laid out as the Python hub client lays it out, so both tools share one
// cache: <cache>/models--org--name/{refs/<revision>, snapshots/<commit>/<file> -> ../../blobs/<etag>,
// blobs/<etag>, .no_exist/<commit>/<file>}. A file missing from the cache is downloaded into that
// layout (HF_ENDPOINT, HF_TOKEN respected; resumable from <etag>.incomplete; size and hash checked;
// moved into place atomically), or, offline, the error says which file is missing where.
//
// Path forms as Kyutai's loaders take them: "hf://org/repo/path/in/repo" (a file of a hub repo, at
// `main`), "file:///abs/path" (a local file), anything else a local path.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace mt::io::hub {

// Progress of one download: bytes done and in all (-1: unknown). `what` names the file.
using Progress = std::function<void(const std::string& what, int64_t done, int64_t total)>;
// A one-line bar (bytes, percent, MB/s, ETA) redrawn on stderr when stderr is a terminal, else one
// line per 10 %.
Progress default_progress();

struct Settings {
  std::string endpoint = "https://huggingface.co";  // HF_ENDPOINT
  // HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, HF_HOME defaulting to
  // $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface; ~ and $VAR expanded.
  std::string cache_dir;
  std::string token;     // HF_TOKEN, HUGGING_FACE_HUB_TOKEN, else the token file (HF_TOKEN_PATH, HF_HOME/token)
  bool offline = false;  // HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set to a true value (1, ON, YES, TRUE)
  double metadata_timeout_s = 10;          // HF_HUB_ETAG_TIMEOUT
  double download_timeout_s = 10;          // HF_HUB_DOWNLOAD_TIMEOUT: longest silence on a connection
  int max_resumes = 5;                     // dropped connections resumed (Range) before giving up
  Progress progress = default_progress();  // an empty function for none
  static Settings from_environment();
};

struct FileRef {
  std::string repo_id;              // "org/name"
  std::string filename;             // path inside the repo ("a/b.safetensors")
  std::string revision = "main";    // branch, tag or 40-hex commit
  std::string repo_type = "model";  // model, dataset, space
};

// True for "hf://..." (and "file://...": resolve() maps both).
bool is_hub_path(const std::string& path);
bool is_file_url(const std::string& path);
// "hf://org/repo/path/in/repo" -> {org/repo, path/in/repo, main}; "hf://org/repo@rev/path" picks a
// revision (an extension: repo names cannot hold '@'). Throws naming the text otherwise.
FileRef parse_hub_path(const std::string& path);

// The local file of `ref`: from the cache, else downloaded into it (unless offline). A file already in
// the snapshot that refs/<revision> names is used without asking the hub, so a branch that moved on is
// followed only for files not cached yet (the Python client asks the hub each time). When the hub
// cannot be reached, a cached copy of the revision is used as the Python client does. Throws mt::Error
// naming the repo, file, cache folder and the reason (offline, not found, 401/403, hash mismatch, ...).
std::string download(const FileRef& ref, const Settings& s = Settings::from_environment());
// The same for a file that may be absent from the repo (Kyutai's config.json): nullopt when the hub
// answers 404 or the cache holds a .no_exist marker for it (which a 404 writes, as the Python client does).
// Offline without a marker it throws as download() does: the file may exist on the hub.
std::optional<std::string> try_download(const FileRef& ref, const Settings& s = Settings::from_environment());
// Cache lookup only, no network: the snapshot path if present, else "".
std::string cached(const FileRef& ref, const std::string& cache_dir);

// Kyutai's path forms: hf:// -> download(), file://X -> X, anything else unchanged. Without settings,
// the environment's are read only for an hf:// path (a local path costs no environment or token-file read).
std::string resolve(const std::string& path, const Settings& s);
std::string resolve(const std::string& path);

// Pieces of the above, exposed for tests and tools.
// The repo's folder under the cache: "models--org--name" (datasets--, spaces--).
std::string repo_folder_name(const FileRef& ref);
// {endpoint}/{datasets/|spaces/}{repo_id}/resolve/{revision}/{filename}, quoted as the Python client quotes.
std::string file_url(const FileRef& ref, const std::string& endpoint);
// A leading ~ and $VAR / ${VAR} expanded as Python's expanduser + expandvars do (unknown variables kept).
std::string expand_path(const std::string& path);

}  // namespace mt::io::hub
