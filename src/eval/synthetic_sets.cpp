// Synthetic paired-likelihood sets spoken by espeak-ng. See synthetic_sets.h for the layout.
//
// Flow: (1) transcribe the built-in words with `espeak-ng -x --sep`, (2) build one Wuggy-style non-word per
// word by swapping one phoneme for another of the same class, checked by letting espeak-ng parse it back,
// (3) write one shell script per worker with one espeak-ng call per wav and run them side by side,
// (4) trim / level every wav in C++ (read and written through audio/audio_io), (5) write gold.csv /
// manifest.csv / README.md.
//
// Every random choice comes from util/prng.h's SplitMix64, one stream per purpose (StreamTag), so that the
// same options, seed and espeak-ng version give the same files.
#include "eval/synthetic_sets.h"

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>

#include "audio/audio_io.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::eval {

using util::SplitMix64;

namespace {

// ------------------------------------------------------------------------------------------------
// Deterministic randomness (util/prng.h), and the few ways the sets draw from it.

// One independent stream per purpose, so that changing one set's size leaves the other sets' choices
// unchanged.
enum StreamTag : uint64_t {
  kTagLexSelect = 1,
  kTagLexNonword,
  kTagLexIds,
  kTagSynGen,
  kTagSynIds,
  kTagStorySelect,
  kTagStoryDerange,
};

SplitMix64 stream(uint64_t seed, StreamTag tag) { return SplitMix64(seed, tag); }

// Fisher-Yates with our own draws: std::shuffle's sequence differs between standard libraries.
template <class T>
void fisher_yates(std::vector<T>& v, SplitMix64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
}

template <class T>
const T& pick(const std::vector<T>& v, SplitMix64& rng) {
  MT_CHECK(!v.empty(), "synthetic sets: pick from an empty list");
  return v[rng.below(v.size())];
}

// File stems unique within one folder.
struct IdMaker {
  SplitMix64 rng;
  std::set<std::string> used;
  std::string next() {
    for (;;) {
      std::string id = random_letters_id(rng);
      if (used.insert(id).second) return id;
    }
  }
};

// ------------------------------------------------------------------------------------------------
// Text, files and child processes.

struct CmdResult {
  int rc = -1;
  std::string out;  // stdout and stderr together
};

CmdResult run_capture(const std::string& cmd) {
  std::string full = "(" + cmd + ") 2>&1";
  FILE* p = popen(full.c_str(), "r");
  MT_CHECK(p != nullptr, "could not start the command: ", cmd, " (", std::strerror(errno), ")");
  CmdResult r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = pclose(p);
  r.rc = st == -1 ? -1 : (WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  return r;
}

// The last n characters of a command's output: enough to see why it failed, not a whole log.
std::string output_tail(const std::string& s, size_t n = 3000) {
  return s.size() <= n ? s : "..." + s.substr(s.size() - n);
}

// Runs cmd and returns its output; a non-zero exit is an error with the command line and the output.
std::string run_checked(const std::string& cmd) {
  CmdResult r = run_capture(cmd);
  MT_CHECK(r.rc == 0, "command failed (exit ", r.rc, "): ", cmd, "\noutput:\n", output_tail(r.out));
  return r.out;
}

std::string shell_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) {
    if (c == '\'')
      r += "'\\''";
    else
      r += c;
  }
  return r + "'";
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  size_t b = s.find_last_not_of(" \t\r\n");
  return s.substr(a, b - a + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> r;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      r.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  r.push_back(cur);
  return r;
}

std::string lower(std::string s) {
  for (auto& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

// Atomic (temporary file + rename), so an interrupted run never leaves half a gold file behind.
void write_text(const fs::path& p, const std::string& text) { atomic_write(p.string(), text); }

// The file's bytes, or "" when it cannot be read (a missing README or worker log is not an error).
std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f.good()) return "";
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void create_folder(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  MT_CHECK(!ec, dir.string(), ": cannot create the folder: ", ec.message());
}

std::string csv(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string r = "\"";
  for (char c : s) r += c == '"' ? std::string("\"\"") : std::string(1, c);
  return r + "\"";
}

// ------------------------------------------------------------------------------------------------
// espeak-ng itself: presence, version and voices.

void require_espeak() {
  MT_CHECK(espeak_available(),
           "espeak-ng was not found on PATH; the synthetic test sets are spoken with it. Install it "
           "(Debian/Ubuntu: apt-get install espeak-ng; scripts/setup.sh installs it) and run again.");
}

// "eSpeak NG text-to-speech: 1.51", without the data folder that follows it (the README records it).
std::string espeak_version() {
  std::string v = trim(split(run_checked("espeak-ng --version"), '\n')[0]);
  if (size_t k = v.find("Data at"); k != std::string::npos) v = trim(v.substr(0, k));
  return v;
}

// Every name a line of `cmd` (espeak-ng --voices, or --voices=variant) gives, lower-cased: language,
// voice name, and voice file with and without its folder. The first line is the column header
// ("Pty Language Age/Gender VoiceName File Other Languages").
std::set<std::string> espeak_voice_names(const std::string& cmd) {
  const std::vector<std::string> lines = split(run_checked(cmd), '\n');
  std::set<std::string> out;
  for (size_t i = 1; i < lines.size(); ++i) {
    std::istringstream is(lines[i]);
    const std::vector<std::string> f{std::istream_iterator<std::string>(is), {}};
    if (f.size() < 5) continue;
    out.insert(lower(f[1]));
    out.insert(lower(f[3]));
    out.insert(lower(f[4]));
    out.insert(lower(f[4].substr(f[4].rfind('/') + 1)));
  }
  return out;
}

// espeak-ng quietly falls back to another voice for an unknown name (e.g. "no-such" speaks Norwegian,
// "en-us+zzz" the plain en-us voice), so names are checked against its own voice lists first.
void validate_voices(const std::vector<std::string>& voices) {
  const std::string lang_cmd = "espeak-ng --voices", var_cmd = "espeak-ng --voices=variant";
  const std::set<std::string> langs = espeak_voice_names(lang_cmd), variants = espeak_voice_names(var_cmd);
  for (const auto& v : voices) {
    const size_t plus = v.find('+');
    MT_CHECK(langs.count(lower(v.substr(0, plus))), "synthetic sets: espeak-ng has no voice '", v.substr(0, plus),
             "' (from '", v, "'; see `", lang_cmd, "`)");
    if (plus == std::string::npos) continue;
    MT_CHECK(variants.count(lower(v.substr(plus + 1))), "synthetic sets: espeak-ng has no voice variant '",
             v.substr(plus + 1), "' (from '", v, "'; see `", var_cmd, "`)");
  }
}

// ------------------------------------------------------------------------------------------------
// Phonemes (espeak-ng's ASCII mnemonics, as printed by `espeak-ng -x --sep='|'`).

struct Phone {
  std::string stress;  // "'" primary, "," secondary, or empty
  std::string base;    // e.g. "aI", "tS", "@L"
};
using Phones = std::vector<Phone>;

enum class Cls { Vowel, Consonant, Fixed };

// Vowels and consonants can be swapped within their class; syllabic consonants (@L, n-), the glottal
// stop and anything unusual stay fixed, so the CV skeleton of the word is kept.
Cls classify(const std::string& b) {
  if (b.empty() || b == "@L" || b.back() == '-' || b.find(';') != std::string::npos) return Cls::Fixed;
  static const std::string vowel_first = "@3aAeEiIoOuUV0";
  if (vowel_first.find(b[0]) != std::string::npos) return Cls::Vowel;
  if ((b[0] >= 'a' && b[0] <= 'z') || (b[0] >= 'A' && b[0] <= 'Z')) return Cls::Consonant;
  return Cls::Fixed;
}

// Phonemes that sound (nearly) the same in espeak's en-us: swapping within a group would give a
// "non-word" that sounds like the word, so such swaps are not allowed, and homophone checks use groups.
std::string sound_group(const std::string& b) {
  static const std::map<std::string, std::string> m = {
      {"aa", "a"}, {"a#", "@"}, {"@2", "@"}, {"@5", "@"}, {"I2", "I"}, {"I#", "I"}, {"i", "i:"},  {"O2", "0"},
      {"A:", "0"}, {"3:", "3"}, {"V", "@"},  {"t#", "t"}, {"t2", "t"}, {"d#", "d"}, {"oU#", "oU"}};
  auto it = m.find(b);
  return it == m.end() ? b : it->second;
}

std::string spelling(const Phones& p) {  // for espeak-ng [[...]] input
  std::string s;
  for (const auto& x : p) s += x.stress + x.base;
  return s;
}
std::string bases(const Phones& p) {  // gold `phones` cell: space separated, no stress marks
  std::string s;
  for (size_t i = 0; i < p.size(); ++i) s += (i ? " " : "") + p[i].base;
  return s;
}
std::string groups_key(const Phones& p) {  // equal keys: the two sound the same
  std::string s;
  for (const auto& x : p) s += sound_group(x.base) + " ";
  return s;
}

// One line of `espeak-ng -x --sep='|'` output for one word; empty when it is not a single word.
Phones parse_phone_line(const std::string& line0) {
  std::string line = trim(line0);
  Phones r;
  if (line.empty() || line.find(' ') != std::string::npos) return r;
  for (const auto& tok : split(line, '|')) {
    size_t k = 0;
    while (k < tok.size() && (tok[k] == '\'' || tok[k] == ',' || tok[k] == '%' || tok[k] == '=')) ++k;
    if (k == tok.size()) continue;
    r.push_back({tok.substr(0, k), tok.substr(k)});
  }
  return r;
}

// The non-empty output lines of one espeak-ng call over all inputs, one sentence per input line.
std::vector<std::string> phoneme_lines_in_one_call(const std::vector<std::string>& inputs, const std::string& voice,
                                                   const fs::path& work) {
  const fs::path in = work / "phonemes_in.txt";
  std::string text;
  for (const auto& s : inputs) text += s + ".\n";
  write_text(in, text);
  const std::string out =
      run_checked("espeak-ng -q -x --sep='|' -v " + shell_quote(voice) + " -f " + shell_quote(in.string()));
  std::vector<std::string> lines;
  for (const auto& l : split(out, '\n'))
    if (!trim(l).empty()) lines.push_back(l);
  return lines;
}

// One espeak-ng call per input, their outputs told apart by marker lines. Slower; used only when the
// single call's output cannot be matched to its inputs line by line.
std::vector<Phones> phonemes_one_call_each(const std::vector<std::string>& inputs, const std::string& voice,
                                           const fs::path& work) {
  const fs::path script = work / "phonemes.sh";
  std::string sh;
  for (size_t i = 0; i < inputs.size(); ++i)
    sh += "echo '@@MT " + std::to_string(i) + "'; espeak-ng -q -x --sep='|' -v " + shell_quote(voice) + " " +
          shell_quote(inputs[i]) + "\n";
  write_text(script, sh);
  std::map<size_t, std::vector<std::string>> by;
  long cur = -1;
  for (const auto& l : split(run_checked("sh " + shell_quote(script.string())), '\n')) {
    if (l.rfind("@@MT ", 0) == 0) {
      cur = std::stol(l.substr(5));
    } else if (cur >= 0 && !trim(l).empty()) {
      by[static_cast<size_t>(cur)].push_back(l);
    }
  }
  std::vector<Phones> out(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i)
    if (by[i].size() == 1) out[i] = parse_phone_line(by[i][0]);
  return out;
}

// Phonemes for each input line (plain text or "[[phonemes]]"), as parsed by espeak-ng with `voice`; empty
// for an input espeak-ng does not read as a single word.
std::vector<Phones> espeak_phonemes(const std::vector<std::string>& inputs, const std::string& voice,
                                    const fs::path& work) {
  if (inputs.empty()) return {};
  const std::vector<std::string> lines = phoneme_lines_in_one_call(inputs, voice, work);
  if (lines.size() != inputs.size()) return phonemes_one_call_each(inputs, voice, work);
  std::vector<Phones> out(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) out[i] = parse_phone_line(lines[i]);
  return out;
}

// ------------------------------------------------------------------------------------------------
// Clips: espeak-ng's wavs as 16-bit sample values. The levelling works on those integer values (its
// thresholds are in 16-bit steps), and a levelled clip is written back in the format espeak-ng wrote it:
// 16-bit PCM mono at espeak-ng's own rate (22,050 Hz).

struct Clip {
  int64_t rate = 0;
  std::vector<int16_t> s;
};

Clip read_clip(const fs::path& path) {
  const std::string p = path.string();
  const audio::AudioFileInfo info = audio::read_audio_info(p);
  MT_CHECK(info.wav && info.pcm_bits == 16 && info.channels == 1, p,
           ": expected a 16-bit PCM mono wav from espeak-ng (wav ", info.wav, ", bits ", info.pcm_bits, ", channels ",
           info.channels, ")");
  const audio::Audio a = audio::read_audio(p);
  // read_audio returns q / 32768 for a 16-bit sample q, so q * 32768 gives q back exactly.
  const float* x = a.samples.data_ptr<float>();
  Clip c{a.sample_rate, std::vector<int16_t>(static_cast<size_t>(a.frames()))};
  for (size_t i = 0; i < c.s.size(); ++i) c.s[i] = static_cast<int16_t>(std::lround(x[i] * 32768.0f));
  return c;
}

void write_clip(const fs::path& path, const Clip& c) { audio::write_wav_pcm16(path.string(), c.s, c.rate); }

// Trim to the first / last sample above -50 dBFS with 10 ms kept on each side, then scale to an RMS of
// -22 dBFS (less if that would push the peak above -0.5 dBFS). The same rule for every clip, so that
// neither leading silence nor loudness tells a word from its non-word.
void equalize(Clip& w, const fs::path& path) {
  const int thr = 104;
  size_t first = w.s.size(), last = 0;
  for (size_t i = 0; i < w.s.size(); ++i) {
    if (std::abs(int(w.s[i])) > thr) {
      if (first == w.s.size()) first = i;
      last = i;
    }
  }
  MT_CHECK(first < w.s.size(), path.string(), ": espeak-ng wrote a silent file");
  size_t margin = static_cast<size_t>(w.rate / 100);
  size_t a = first > margin ? first - margin : 0;
  size_t e = std::min(w.s.size(), last + 1 + margin);
  std::vector<int16_t> s(w.s.begin() + static_cast<std::ptrdiff_t>(a), w.s.begin() + static_cast<std::ptrdiff_t>(e));
  double sum = 0;
  int peak = 1;
  for (int16_t v : s) {
    sum += double(v) * double(v);
    peak = std::max(peak, std::abs(int(v)));
  }
  double rms = std::sqrt(sum / double(s.size()));
  double gain = std::min(0.0794 * 32767.0 / std::max(rms, 1.0), 0.944 * 32767.0 / peak);
  for (auto& v : s) {
    long x = std::lround(double(v) * gain);
    v = static_cast<int16_t>(std::clamp(x, -32768L, 32767L));
  }
  w.s = std::move(s);
}

// ------------------------------------------------------------------------------------------------
// Batched synthesis: thousands of short espeak-ng calls, so they run from a few shell scripts side by
// side rather than one popen each.

struct SynthJob {
  std::string voice;
  std::string text;  // plain text, or "[[phonemes]]"
  fs::path wav;
};

std::string synth_command(const SynthJob& j, int speed) {
  return "espeak-ng -v " + shell_quote(j.voice) + " -s " + std::to_string(speed) + " -w " +
         shell_quote(j.wav.string()) + " " + shell_quote(j.text);
}

// Writes one script per worker (job i goes to worker i % workers), runs them side by side and returns
// their combined output. A failing call does not stop its script: it prints a marker with the job's index,
// then the call's own output, so that the failure can be reported with its command line.
std::string run_synth_scripts(const std::vector<SynthJob>& all, const fs::path& work, const SyntheticOptions& o,
                              const std::string& label) {
  const size_t nw = static_cast<size_t>(std::max(1, o.jobs));
  std::string cmd = "cd " + shell_quote(work.string()) + " && (";
  for (size_t k = 0; k < nw; ++k) {
    std::string sh;
    for (size_t i = k; i < all.size(); i += nw)
      sh += "if ! out=$(" + synth_command(all[i], o.speed) + " 2>&1); then echo 'MT_SYNTH_FAILED " + std::to_string(i) +
            "'; printf '%s\\n' \"$out\"; echo MT_SYNTH_END; fi\n";
    const std::string name = label + "_" + std::to_string(k);
    write_text(work / (name + ".sh"), sh);
    cmd += "sh " + name + ".sh > " + name + ".out 2>&1 & ";
  }
  cmd += "wait)";
  const CmdResult r = run_capture(cmd);
  std::string outputs;
  for (size_t k = 0; k < nw; ++k) outputs += read_text(work / (label + "_" + std::to_string(k) + ".out"));
  MT_CHECK(r.rc == 0, "command failed (exit ", r.rc, "): ", cmd, "\noutput:\n", output_tail(r.out + outputs));
  return outputs;
}

// If any call failed, fails with the first failure's wav, command line and output, and how many failed.
void fail_on_synth_markers(const std::string& outputs, const std::vector<SynthJob>& all, int speed) {
  const std::string marker = "MT_SYNTH_FAILED ";
  const size_t f = outputs.find(marker);
  if (f == std::string::npos) return;
  size_t n_failed = 0;
  for (size_t k = f; k != std::string::npos; k = outputs.find(marker, k + 1)) ++n_failed;
  const size_t i = std::stoul(outputs.substr(f + marker.size()));
  const size_t body = outputs.find('\n', f);
  const size_t end = outputs.find("MT_SYNTH_END", f);
  const std::string own = body == std::string::npos
                              ? ""
                              : outputs.substr(body + 1, end == std::string::npos ? std::string::npos : end - body - 1);
  fail(all.at(i).wav.string(), ": espeak-ng failed (", n_failed, " of ", all.size(),
       " calls): ", synth_command(all.at(i), speed), "\noutput:\n", output_tail(trim(own)));
}

// Runs all jobs, checks that every wav was written, and trims / levels it when o.equalize. Returns each
// clip's length in samples (the duration confound check compares them).
std::vector<size_t> synthesize(const std::vector<SynthJob>& all, const fs::path& work, const SyntheticOptions& o,
                               const std::string& label) {
  const std::string outputs = run_synth_scripts(all, work, o, label);
  fail_on_synth_markers(outputs, all, o.speed);
  std::vector<size_t> lengths(all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    const fs::path& p = all[i].wav;
    std::error_code ec;
    const auto size = fs::file_size(p, ec);
    MT_CHECK(!ec && size > 44, p.string(), ": espeak-ng did not write it: ", synth_command(all[i], o.speed),
             "\noutput:\n", output_tail(outputs));
    Clip c = read_clip(p);
    if (o.equalize) {
      equalize(c, p);
      write_clip(p, c);
    }
    lengths[i] = c.s.size();
  }
  return lengths;
}

// Accuracy of "the longer clip is the correct one" (ties 0.5) over clips spoken as good, bad, good, ...;
// -1 for no pairs.
double longer_wins(const std::vector<size_t>& lengths) {
  if (lengths.size() < 2) return -1;
  double s = 0;
  size_t n = 0;
  for (size_t i = 0; i + 1 < lengths.size(); i += 2, ++n)
    s += lengths[i] > lengths[i + 1] ? 1.0 : lengths[i] == lengths[i + 1] ? 0.5 : 0.0;
  return s / double(n);
}

// ------------------------------------------------------------------------------------------------
// Built-in material. All of it was written for this project.

// Rough spoken-frequency counts chosen by hand so that every ZeroSpeech frequency band appears
// (oov = 0, 1-4, 5-19, 20-99, >= 100). They are NOT LibriSpeech counts (which the official gold uses).
struct LexWord {
  const char* word;
  int64_t freq;
};
// clang-format off
const LexWord kWords[] = {
    // >= 100
    {"water", 620}, {"house", 540}, {"little", 980}, {"people", 760}, {"because", 700}, {"morning", 310},
    {"mother", 450}, {"friend", 280}, {"never", 890}, {"garden", 160}, {"window", 190}, {"letter", 210},
    // 20-99
    {"kitchen", 85}, {"river", 95}, {"pocket", 60}, {"dinner", 70}, {"yellow", 55}, {"basket", 30},
    {"candle", 25}, {"winter", 80}, {"shoulder", 90}, {"ladder", 22}, {"carpet", 28}, {"meadow", 35},
    // 5-19
    {"lantern", 12}, {"pebble", 6}, {"blanket", 18}, {"kettle", 9}, {"trumpet", 8}, {"velvet", 15},
    {"gravel", 10}, {"cabbage", 7}, {"walrus", 5}, {"falcon", 11}, {"goblet", 6}, {"thimble", 5},
    // 1-4
    {"parsnip", 2}, {"turnip", 3}, {"mallet", 4}, {"nostril", 3}, {"trellis", 2}, {"marmot", 1},
    {"zither", 1}, {"sextant", 2}, {"wombat", 1}, {"plinth", 1}, {"ocelot", 1}, {"tundra", 4},
    // 0: rare, out-of-vocabulary-like
    {"kumquat", 0}, {"quokka", 0}, {"okapi", 0}, {"yurt", 0}, {"pangolin", 0}, {"gazebo", 0},
    {"tapir", 0}, {"loofah", 0}, {"ramekin", 0}, {"kohlrabi", 0}, {"wasabi", 0}, {"tofu", 0},
};
// clang-format on

// Common English words used only to reject non-words that sound like a real word (and, with the words
// above, as the phoneme statistics for the replacements). Not a dictionary: rarer homophones can slip
// through.
const char* const kCommonWords =
    "a about above after again age air all also always animal answer any apple arm art ask away baby back bad "
    "bag ball band bank bar base bat bath bay bead beach bean bear beat bed bee beef bell belt bench best bet "
    "big bike bill bin bird bit bite black blade blind block blood blow blue board boat body bone book boot "
    "born boss both bottom bowl box boy brain bread break bridge bright bring brown buck bud build bull burn "
    "bus bush busy buy cab cake call calm camp can cap car card care cart case cash cat catch cause cell chain "
    "chair chance change cheap check cheese chest chin city class clean clear clock close cloth cloud coat "
    "code coin cold color come cook cool copy corn cost cot could count country cow crack cream crop cross cry "
    "cup cut dad dance dark date daughter day dead deal dear deep deer desk dig dirt dish dock dog doll door "
    "dot down dream dress drink drive drop drum dry duck dust ear early earth east eat edge egg end even "
    "evening eye face fact fall family farm fast fat fear feed feel fell fence few field fig fight fill film "
    "find fine finger fish fit flag flat floor flow fly fold food foot form fox free fresh frog full fun fur "
    "game gate get gift girl give glad glass goat gold good grass gray great green ground grow gun hall hand "
    "hang happy hard hat have head hear heart heat hen hill hit hold hole home hope horse hot hour hunt hurt "
    "ice idea ill ink iron jam job join joke jump just keep key kick kid kill kind king kiss kit knee knife "
    "know lady lake lamb lamp land large last late later latter laugh law lay lead leaf learn leg lend less "
    "let lever lid life lift light like line lip list live load lock log long look lose lot loud love low luck "
    "lunch mad mail make man map mark mat meal meat meet melt men milk mind miss mix month moon more moss "
    "mouse mouth move mud mug name neck need nest net new news next nice night nod noise north nose note nut "
    "oil old open page pain paint pair pan park part pass past path pay pen pencil pet pick pie pig pin pipe "
    "place plan plant play pool poor pot press pull pump push put rain rat read red rest rice rich ride ring "
    "rise road rock roll roof room root rope rose round row rub run sad safe salt sand save say school sea "
    "seat see seed sell send set shape sheep shell ship shirt shoe shop short show sick side sign silver sing "
    "sit size skin sky sleep slow small smell smile smoke snake snow soap sock soft son song soon sort sound "
    "soup south speak spoon spring stamp star start stay step stick still stone stop story street string "
    "strong such sugar sun supper sweet swim tail take talk tall taste tea teach team tell ten test thick thin "
    "thing think tie time tin tip toe ton tool top touch town toy train tree trip truck try tub turn twin "
    "under up use van very voice wait walk wall want war warm wash watch wave way week well west wet wheel "
    "whip white wide wife wild win wind wing wire wise wish wood wool word work world young zoo bitter butter "
    "litter matter better batter leather feather weather liver giver cover lover summer center enter waiter "
    "rather gather other brother father bother sister mister master faster paper taper copper pepper hammer "
    "honey money funny bunny sunny penny jelly belly bottle battle cattle rattle settle middle fiddle riddle "
    "handle table cable label purple simple temple widow pillow fellow shadow rocket locket jacket bucket "
    "ticket market pardon chicken children husband ribbon lesson season reason person button mutton cotton "
    "kitten mitten bitten written mountain pattern western wagon dragon lemon melon salmon common ";

// The ZeroSpeech frequency band of a count: 0 = oov (0), 1 = 1-4, 2 = 5-19, 3 = 20-99, 4 = >= 100.
int band_of(int64_t f) { return f <= 0 ? 0 : f < 5 ? 1 : f < 20 ? 2 : f < 100 ? 3 : 4; }
const char* const kBandNames[] = {"oov (0)", "1-4", "5-19", "20-99", ">=100"};

// --- syntactic lexicon ---
struct NP {
  const char* sg;
  const char* pl;
};
struct VP {
  const char* s3;  // third person singular present
  const char* base;
};
const std::vector<NP> kAnimate = {{"dog", "dogs"},       {"cat", "cats"},         {"teacher", "teachers"},
                                  {"farmer", "farmers"}, {"bird", "birds"},       {"doctor", "doctors"},
                                  {"baker", "bakers"},   {"student", "students"}, {"neighbor", "neighbors"},
                                  {"horse", "horses"}};
const std::vector<VP> kIntransitive = {{"sleeps", "sleep"}, {"sings", "sing"}, {"waits", "wait"}, {"laughs", "laugh"},
                                       {"works", "work"},   {"swims", "swim"}, {"runs", "run"},   {"rests", "rest"}};
const std::vector<std::string> kAdverbials = {"every morning", "after lunch", "on weekends", "at night",
                                              "all day long",  "quietly",     "outside",     "for a while"};
const std::vector<NP> kLandmarks = {{"window", "windows"}, {"door", "doors"}, {"bench", "benches"},
                                    {"gate", "gates"},     {"tree", "trees"}, {"fence", "fences"}};
const std::vector<NP> kThings = {{"book", "books"}, {"chair", "chairs"},     {"apple", "apples"}, {"cup", "cups"},
                                 {"box", "boxes"},  {"picture", "pictures"}, {"shoe", "shoes"},   {"lamp", "lamps"},
                                 {"coat", "coats"}, {"plate", "plates"}};
const std::vector<std::string> kObjVerbsPast = {"bought", "cleaned", "moved",   "painted",
                                                "found",  "liked",   "carried", "dropped"};
const std::vector<std::string> kAdjectives = {"red", "old", "small", "heavy", "new", "blue"};
struct Name {
  const char* name;
  bool female;
};
const std::vector<Name> kNames = {{"Anna", true},  {"David", false},  {"Maria", true}, {"Peter", false},
                                  {"Susan", true}, {"Thomas", false}, {"Laura", true}, {"James", false}};
struct GNoun {
  const char* sg;
  const char* pl;
  bool female;
};
const std::vector<GNoun> kGendered = {
    {"girl", "girls", true},     {"boy", "boys", false},         {"woman", "women", true},  {"man", "men", false},
    {"sister", "sisters", true}, {"brother", "brothers", false}, {"queen", "queens", true}, {"king", "kings", false}};
const std::vector<std::string> kReflVerbs = {"hurt", "washed", "blamed", "praised", "dressed", "introduced"};
const std::vector<std::string> kReflTails = {"", " again", " yesterday", " this morning"};
struct Irregular {
  const char* good;
  const char* bad;
  const char* rest;
};
const std::vector<Irregular> kPast = {{"went", "goed", "home early"},          {"ate", "eated", "all the soup"},
                                      {"ran", "runned", "to the bus stop"},    {"caught", "catched", "the ball"},
                                      {"brought", "bringed", "some bread"},    {"wrote", "writed", "a long letter"},
                                      {"swam", "swimmed", "across the lake"},  {"took", "taked", "the last train"},
                                      {"sold", "selled", "the old car"},       {"told", "telled", "a funny story"},
                                      {"drew", "drawed", "a map of the town"}, {"found", "finded", "the missing key"},
                                      {"threw", "throwed", "the stick"},       {"won", "winned", "the race"}};
const std::vector<std::string> kPastSubjects = {"The children", "My brother", "Our neighbors", "The boys",
                                                "Anna",         "David",      "The farmer",    "Her friends"};
const std::vector<Irregular> kPlural = {
    {"children", "childs", "played in the park"}, {"children", "childs", "laughed at the clown"},
    {"mice", "mouses", "hid behind the wall"},    {"mice", "mouses", "ate the cheese"},
    {"geese", "gooses", "flew over the farm"},    {"geese", "gooses", "walked to the pond"},
    {"men", "mans", "worked until dark"},         {"men", "mans", "carried the boxes"},
    {"women", "womans", "walked to the market"},  {"women", "womans", "sang together"},
    {"sheep", "sheeps", "ate the grass"},         {"oxen", "oxes", "pulled the cart"}};

struct SynPair {
  std::string type, subtype, good, bad;
};

std::string sentence(std::string s) {
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s + ".";
}

// "the dog(s) [near the window(s)] sleep(s) ...": only the verb's number changes. Subtype 1 puts an
// attractor of the other number between subject and verb.
SynPair subject_verb_pair(int sub, bool plural, SplitMix64& r) {
  SynPair p{"subject_verb_agreement", "simple", "", ""};
  const NP& n = pick(kAnimate, r);
  const VP& v = pick(kIntransitive, r);
  const std::string& adv = pick(kAdverbials, r);
  std::string subj = std::string("the ") + (plural ? n.pl : n.sg);
  if (sub == 1) {
    p.subtype = "across_prepositional_phrase";
    const NP& l = pick(kLandmarks, r);
    subj += std::string(" near the ") + (plural ? l.sg : l.pl);
  }
  p.good = sentence(subj + " " + (plural ? v.base : v.s3) + " " + adv);
  p.bad = sentence(subj + " " + (plural ? v.s3 : v.base) + " " + adv);
  return p;
}

// "Anna bought this/these [red] book(s)": only the determiner changes.
SynPair determiner_noun_pair(int sub, bool plural, SplitMix64& r) {
  SynPair p{"determiner_noun_agreement", "simple", "", ""};
  const Name& who = pick(kNames, r);
  const std::string& verb = pick(kObjVerbsPast, r);
  const NP& t = pick(kThings, r);
  const bool proximal = r.below(2) == 0;
  const char* det_sg = proximal ? "this" : "that";
  const char* det_pl = proximal ? "these" : "those";
  std::string adj;
  if (sub == 1) {
    p.subtype = "with_adjective";
    adj = pick(kAdjectives, r) + " ";
  }
  const std::string noun = plural ? t.pl : t.sg;
  const std::string head = std::string(who.name) + " " + verb + " ";
  p.good = sentence(head + (plural ? det_pl : det_sg) + " " + adj + noun);
  p.bad = sentence(head + (plural ? det_sg : det_pl) + " " + adj + noun);
  return p;
}

// A reflexive that must agree with its antecedent in gender (subtype 0) or number (subtype 1).
SynPair anaphor_pair(int sub, bool plural, SplitMix64& r) {
  SynPair p{"anaphor_agreement", "", "", ""};
  const std::string& verb = pick(kReflVerbs, r);
  const std::string& tail = pick(kReflTails, r);
  if (sub == 0) {
    p.subtype = "gender";
    const Name& who = pick(kNames, r);
    const std::string head = std::string(who.name) + " " + verb + " ";
    p.good = sentence(head + (who.female ? "herself" : "himself") + tail);
    p.bad = sentence(head + (who.female ? "himself" : "herself") + tail);
  } else {
    p.subtype = "number";
    const GNoun& g = pick(kGendered, r);
    const std::string head = std::string("the ") + (plural ? g.pl : g.sg) + " " + verb + " ";
    const char* self = g.female ? "herself" : "himself";
    p.good = sentence(head + (plural ? "themselves" : self) + tail);
    p.bad = sentence(head + (plural ? self : "themselves") + tail);
  }
  return p;
}

// An irregular past tense (subtype 0) or plural (subtype 1) against its over-regularised form.
SynPair irregular_pair(int sub, SplitMix64& r) {
  SynPair p{"irregular_forms", "", "", ""};
  if (sub == 0) {
    p.subtype = "past_tense";
    const Irregular& it = pick(kPast, r);
    const std::string& subj = pick(kPastSubjects, r);
    p.good = sentence(subj + " " + it.good + " " + it.rest);
    p.bad = sentence(subj + " " + it.bad + " " + it.rest);
  } else {
    p.subtype = "plural_noun";
    const Irregular& it = pick(kPlural, r);
    p.good = sentence(std::string("the ") + it.good + " " + it.rest);
    p.bad = sentence(std::string("the ") + it.bad + " " + it.rest);
  }
  return p;
}

// One minimal pair of the given type (0-3) and subtype (0-1). The number is drawn first whatever the type
// (irregular forms ignore it): the pairs of a seed depend on that order of draws.
SynPair make_syntactic_pair(int type, int sub, SplitMix64& r) {
  const bool plural = r.below(2) == 1;
  switch (type) {
    case 0: return subject_verb_pair(sub, plural, r);
    case 1: return determiner_noun_pair(sub, plural, r);
    case 2: return anaphor_pair(sub, plural, r);
    default: return irregular_pair(sub, r);
  }
}

// --- stories: four context sentences, a fitting ending, and a plausible-looking ending that contradicts
// the context (in the spirit of StoryCloze's wrong endings). Written for this project.
struct Story {
  const char* context;
  const char* good;
  const char* bad;
};
const Story kStories[] = {
    {"Mia planted tomato seeds in a pot on her balcony. She watered them every morning before work. After two weeks, "
     "small green shoots appeared. By midsummer the plants were heavy with red fruit.",
     "Mia picked a bowl of tomatoes and made a fresh salad.", "Mia was sad that nothing had ever grown in the pot."},
    {"Omar's old bicycle had a flat tire. He carried it to the repair shop on Saturday. The mechanic found a small "
     "nail in the rubber. She patched the tube and pumped it up.",
     "Omar paid the mechanic and rode his bike home.", "Omar walked home because nobody would fix his tire."},
    {"Grace wanted to bake a cake for her father's birthday. She bought flour, eggs, and chocolate at the store. She "
     "mixed everything carefully and put the pan in the oven. An hour later the kitchen smelled wonderful.",
     "Her father smiled when she brought the cake to the table.",
     "She realized she had forgotten to buy any ingredients."},
    {"Leo was nervous about his first swimming lesson. His mother promised to wait by the pool. The teacher showed "
     "him how to float on his back. By the end of the hour Leo was kicking across the shallow end.",
     "He asked his mother if he could come back next week.",
     "He told his mother that he had never gone into the water."},
    {"The power went out during a storm one evening. Hannah found a box of candles in a drawer. She lit a few and set "
     "them on the table. Her family played cards by the soft light.",
     "When the lights came back on, they finished the game anyway.",
     "They could not see the cards in the completely dark room."},
    {"Sam forgot his umbrella on a cloudy morning. On the walk home, heavy rain began to fall. He ran from one shop "
     "doorway to the next. By the time he reached his door he was soaked.",
     "He changed into dry clothes and made a cup of tea.", "He was glad that his clothes had stayed perfectly dry."},
    {"Nina adopted a shy gray kitten from the shelter. For the first few days it hid under the bed. Nina left food "
     "and a soft blanket nearby. Slowly the kitten began to follow her around the flat.",
     "Soon it was sleeping curled up on her lap every evening.", "Soon it was too frightened to come near her at all."},
    {"Daniel had a big math test on Friday. He studied with a friend every night that week. They worked through all "
     "the practice problems together. On Friday he felt calm as he walked into the classroom.",
     "A week later he was proud to see a high mark on his test.",
     "He was worried because he had not opened his books all week."},
    {"Rosa's car would not start on a cold morning. She called her neighbor, who had jumper cables. He parked beside "
     "her and connected the two batteries. After a minute her engine roared to life.",
     "Rosa thanked her neighbor and drove to work on time.", "Rosa took the bus because the car would not start."},
    {"Ben wanted to surprise his wife with breakfast in bed. He woke up early and crept into the kitchen. He made "
     "pancakes, coffee, and a glass of orange juice. He carried the tray carefully up the stairs.",
     "His wife woke up, saw the tray, and laughed with delight.",
     "His wife was annoyed that he had not made her any breakfast."},
    {"Aisha's grandmother taught her to knit during the winter holidays. At first her stitches were loose and uneven. "
     "She practiced every evening while they watched television. By spring she had finished a long striped scarf.",
     "She gave the scarf to her grandmother as a thank-you gift.",
     "She still did not know how to hold the knitting needles."},
    {"The school held a book sale to raise money for the library. Students brought old books from home to donate. "
     "Parents came on Saturday and filled bags with stories. By the afternoon almost every table was empty.",
     "The library used the money to buy a shelf of new books.",
     "Nobody had come, so all the books were left on the tables."},
    {"Felix decided to climb the hill behind his village. He packed water, a sandwich, and a warm jacket. The path "
     "grew steep and rocky near the top. After three hours he finally reached the summit.",
     "He sat down and enjoyed the view over the valley.", "He sighed because he had never left the village."},
    {"Clara's phone slipped out of her pocket on the bus. She noticed it was missing as soon as she got off. She "
     "called the bus company from a friend's phone. A driver had found it on a seat and kept it safe.",
     "Clara picked up her phone from the depot that afternoon.",
     "Clara was told that nobody had seen the phone anywhere at all."},
    {"Max and his sister built a snowman in the yard. They rolled three big balls of snow. Max found two stones for "
     "its eyes. His sister gave it a carrot nose and an old hat.",
     "They took a photo with the snowman before going inside.",
     "They were sad because no snow had fallen that winter."},
    {"Priya signed up for a cooking class at the community center. Each week the group learned a dish from a "
     "different country. She practiced the recipes at home for her roommates. At the last class the teacher asked "
     "everyone to cook a meal alone.",
     "Priya made a curry that the whole class enjoyed.", "Priya admitted that she had never cooked a meal before."},
    {"Tom noticed that the bird feeder in his garden was empty. He bought a bag of seeds at the hardware store. He "
     "filled the feeder and hung it back on the branch. The next morning he watched from the kitchen window.",
     "A group of small birds was already eating the seeds.", "He saw that the feeder had never been filled."},
    {"Elena was moving to a new apartment across town. Her friends helped her pack boxes all weekend. On Sunday they "
     "loaded everything into a rented van. It took two trips to carry the furniture upstairs.",
     "That night she ordered pizza for everyone to say thanks.",
     "That night she slept in her old apartment as she always had."},
    {"Jack's team was losing the football game at half time. The coach told them to pass the ball more often. In the "
     "second half they scored two quick goals. With a minute left, Jack kicked the ball into the corner of the net.",
     "The team celebrated their win in the dressing room.", "The team was sad because they had not scored once."},
    {"Lily found a lost dog wandering in the park. It had a collar with a phone number on the tag. She called the "
     "number and a worried man answered. He arrived twenty minutes later, out of breath.",
     "The dog jumped into his arms and wagged its tail.", "The man said that he had never owned a dog in his life."},
};
constexpr size_t kNumStories = sizeof(kStories) / sizeof(kStories[0]);

// ------------------------------------------------------------------------------------------------
// Making the sets. Each set's function draws its items, writes its folder (wavs, then gold / manifest),
// and records in ReadmeFacts what the README will say about it.

const char* const kReadmeTitle = "# SYNTHETIC paired-likelihood test sets (moshi-ttt, espeak-ng TTS)";

// What the README reports beyond the options and the summary, gathered while the sets are made.
struct ReadmeFacts {
  std::string espeak_version;
  int64_t lex_dropped = 0;                   // built-in words espeak-ng does not read back unchanged
  int64_t n_common = 0;                      // common words in the homophone check
  std::array<int64_t, 3> lex_tiers{};        // non-words chosen per phonotactic tier
  std::map<std::string, int64_t> lex_bands;  // ids per frequency band
  std::string lex_table;                     // one markdown row per id
  std::map<std::string, int64_t> syn_types;  // pairs per "type / subtype"
  std::string syn_examples;                  // the first pairs, one markdown bullet each
};

// Where the sets are written and how they are made.
struct Target {
  fs::path root, work;
  const SyntheticOptions& o;
};

struct Timer {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  double s() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
};

std::string fmt_acc(double v) {
  if (v < 0) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

// ---------------------------------------------------------------------------- lexical

constexpr size_t kNumWords = sizeof(kWords) / sizeof(kWords[0]);

struct LexEntry {
  const LexWord* w;
  Phones ph;
};

// Phonemes (en-us) of the built-in words followed by the common words, from one espeak-ng call.
std::vector<Phones> transcribe_lexicon(const fs::path& work, int64_t& n_common) {
  std::vector<std::string> texts;
  for (const auto& w : kWords) texts.push_back(w.word);
  for (const auto& w : split(kCommonWords, ' '))
    if (!trim(w).empty()) texts.push_back(trim(w));
  n_common = int64_t(texts.size() - kNumWords);
  return espeak_phonemes(texts, "en-us", work);
}

// The built-in words whose phoneme string espeak-ng reads back unchanged: both members of a pair are
// spoken from phonemes, so a word that does not survive the round trip would not be spoken as itself.
std::vector<LexEntry> usable_words(const std::vector<Phones>& from_text, const fs::path& work, int64_t& dropped) {
  std::vector<std::string> spelled;
  for (size_t i = 0; i < kNumWords; ++i) spelled.push_back("[[" + spelling(from_text[i]) + "]]");
  const std::vector<Phones> back = espeak_phonemes(spelled, "en-us", work);
  std::vector<LexEntry> valid;
  for (size_t i = 0; i < kNumWords; ++i) {
    if (!from_text[i].empty() && bases(from_text[i]) == bases(back[i]))
      valid.push_back({&kWords[i], from_text[i]});
    else
      ++dropped;
  }
  return valid;
}

// Real-word phoneme statistics over the built-in and common words: inventory counts (replacement weights),
// homophone keys, and attested phoneme bigrams and trigrams (a crude phonotactic filter, with the word
// edges as '#', so that e.g. a word-initial "k t" is not licensed by "act").
struct PhoneStats {
  std::map<std::string, int64_t> inventory;
  std::set<std::string> real_keys;
  std::set<std::string> ngrams;  // "a b" and "a b c" over sound groups

  explicit PhoneStats(const std::vector<Phones>& words) {
    for (const Phones& ph : words) {
      if (ph.empty()) continue;
      real_keys.insert(groups_key(ph));
      for (const auto& p : ph)
        if (classify(p.base) != Cls::Fixed) ++inventory[p.base];
      const std::vector<std::string> g = padded(ph);
      for (size_t k = 0; k + 1 < g.size(); ++k) ngrams.insert(g[k] + " " + g[k + 1]);
      for (size_t k = 0; k + 2 < g.size(); ++k) ngrams.insert(g[k] + " " + g[k + 1] + " " + g[k + 2]);
    }
  }

  static std::vector<std::string> padded(const Phones& ph) {
    std::vector<std::string> g = {"#"};
    for (const auto& p : ph) g.push_back(sound_group(p.base));
    g.push_back("#");
    return g;
  }

  // 0: every phoneme trigram around position j occurs in a real word; 1: every bigram does; 2: neither.
  int tier(const Phones& cand, size_t j) const {
    const std::vector<std::string> g = padded(cand);
    const size_t J = j + 1;
    bool tri = true, bi = true;
    for (size_t a = J >= 2 ? J - 2 : 0; a <= J && a + 2 < g.size(); ++a)
      tri = tri && ngrams.count(g[a] + " " + g[a + 1] + " " + g[a + 2]);
    for (size_t a = J - 1; a <= J && a + 1 < g.size(); ++a) bi = bi && ngrams.count(g[a] + " " + g[a + 1]);
    return tri && bi ? 0 : bi ? 1 : 2;
  }
};

// The n ids' words (n <= valid.size()): shuffled within each frequency band, then the bands taken in turn,
// most frequent first, so that every band appears even in a small set.
std::vector<LexEntry> choose_words(const std::vector<LexEntry>& valid, int64_t n, uint64_t seed) {
  SplitMix64 rng = stream(seed, kTagLexSelect);
  std::vector<std::vector<size_t>> by_band(5);
  for (size_t i = 0; i < valid.size(); ++i) by_band[size_t(band_of(valid[i].w->freq))].push_back(i);
  for (auto& b : by_band) fisher_yates(b, rng);
  std::vector<LexEntry> chosen;
  for (size_t round = 0; int64_t(chosen.size()) < n; ++round)
    for (int b = 4; b >= 0 && int64_t(chosen.size()) < n; --b)
      if (round < by_band[size_t(b)].size()) chosen.push_back(valid[by_band[size_t(b)][round]]);
  return chosen;
}

struct Candidate {
  Phones ph;
  int tier;  // PhoneStats::tier of the change
};

// One possible change of a word: phoneme `pos` becomes `rep`, drawn with weight `weight`.
struct Swap {
  size_t pos;
  std::string rep;
  int64_t weight;
};

// Every allowed one-phoneme change of w, by phonotactic tier: a phoneme of the same class (vowel /
// consonant) and another sound group, weighted by how often it occurs in the real words; changes that make
// w sound like a real word are left out.
std::array<std::vector<Swap>, 3> swaps_by_tier(const Phones& w, const PhoneStats& st) {
  std::array<std::vector<Swap>, 3> tiers;
  for (size_t j = 0; j < w.size(); ++j) {
    const Cls cl = classify(w[j].base);
    if (cl == Cls::Fixed) continue;
    for (const auto& [rep, cnt] : st.inventory) {
      if (classify(rep) != cl || sound_group(rep) == sound_group(w[j].base)) continue;
      Phones cand = w;
      cand[j].base = rep;
      if (st.real_keys.count(groups_key(cand))) continue;
      tiers[size_t(st.tier(cand, j))].push_back({j, rep, cnt});
    }
  }
  return tiers;
}

// Up to 8 non-word candidates for w, better tiers first, each tier's changes drawn without replacement in
// proportion to their weights. Several, because espeak-ng may not read a candidate back as written.
std::vector<Candidate> draw_candidates(const Phones& w, const PhoneStats& st, SplitMix64& rng) {
  constexpr size_t kMaxCandidates = 8;
  std::array<std::vector<Swap>, 3> tiers = swaps_by_tier(w, st);
  std::vector<Candidate> out;
  for (int ti = 0; ti < 3; ++ti) {
    std::vector<Swap>& tier = tiers[size_t(ti)];
    while (!tier.empty() && out.size() < kMaxCandidates) {
      int64_t total = 0;
      for (const auto& x : tier) total += x.weight;
      int64_t r = int64_t(rng.below(uint64_t(total)));
      size_t k = 0;
      while (r >= tier[k].weight) r -= tier[k++].weight;
      Phones cand = w;
      cand[tier[k].pos].base = tier[k].rep;
      out.push_back({cand, ti});
      tier.erase(tier.begin() + std::ptrdiff_t(k));
    }
  }
  return out;
}

// Each word's non-word: its first candidate that espeak-ng reads back as exactly the intended phonemes
// (concatenated mnemonics can merge, e.g. t + S -> tS) and that sounds like no earlier word's non-word.
// One espeak-ng call for all candidates.
std::vector<Phones> pick_nonwords(const std::vector<LexEntry>& words, const std::vector<std::vector<Candidate>>& cands,
                                  const fs::path& work, ReadmeFacts& facts) {
  std::vector<std::string> inputs;
  for (const auto& cs : cands)
    for (const auto& c : cs) inputs.push_back("[[" + spelling(c.ph) + "]]");
  const std::vector<Phones> back = espeak_phonemes(inputs, "en-us", work);
  std::vector<Phones> nonword(words.size());
  std::set<std::string> used;
  size_t q = 0;
  for (size_t c = 0; c < words.size(); ++c) {
    for (const Candidate& cand : cands[c]) {
      const Phones& b = back[q++];
      if (!nonword[c].empty() || bases(b) != bases(cand.ph) || used.count(groups_key(cand.ph))) continue;
      nonword[c] = cand.ph;
      used.insert(groups_key(cand.ph));
      ++facts.lex_tiers[size_t(cand.tier)];
    }
    MT_CHECK(!nonword[c].empty(), "synthetic sets: espeak-ng read back none of the ", cands[c].size(),
             " non-word candidates for '", words[c].w->word, "' unchanged");
  }
  return nonword;
}

// lexical/dev: per id and voice, the word's then the non-word's wav and gold row (the order the official
// scorer's positional pairing needs), both spoken from phonemes with the same voice.
void write_lexical(const Target& t, const std::vector<LexEntry>& words, const std::vector<Phones>& nonword,
                   ReadmeFacts& facts, SyntheticSummary& sum) {
  const fs::path dir = t.root / "lexical" / "dev";
  create_folder(dir);
  IdMaker ids{stream(t.o.seed, kTagLexIds), {}};
  std::vector<SynthJob> jobs;
  std::ostringstream gold, table;
  gold << "id,filename,voice,frequency,word,phones,length,correct\n";
  for (size_t c = 0; c < words.size(); ++c) {
    const LexEntry& e = words[c];
    ++facts.lex_bands[kBandNames[band_of(e.w->freq)]];
    for (const auto& v : t.o.voices) {
      const std::string a = ids.next(), b = ids.next();
      gold << c << "," << a << "," << csv(v) << "," << e.w->freq << "," << e.w->word << "," << bases(e.ph) << ","
           << e.ph.size() << ",1\n";
      gold << c << "," << b << "," << csv(v) << "," << e.w->freq << ",," << bases(nonword[c]) << ","
           << nonword[c].size() << ",0\n";
      jobs.push_back({v, "[[" + spelling(e.ph) + "]]", dir / (a + ".wav")});
      jobs.push_back({v, "[[" + spelling(nonword[c]) + "]]", dir / (b + ".wav")});
    }
    table << "| " << c << " | " << e.w->word << " | " << e.w->freq << " | `" << spelling(e.ph) << "` | `"
          << spelling(nonword[c]) << "` |\n";
  }
  sum.lexical_longer_wins = longer_wins(synthesize(jobs, t.work, t.o, "lexical"));
  write_text(dir / "gold.csv", gold.str());
  sum.lexical_files = int64_t(jobs.size());
  facts.lex_table = table.str();
}

// The whole lexical set: transcribe, keep the usable words, choose the ids' words, draw and check their
// non-words, write the folder.
void make_lexical(const Target& t, ReadmeFacts& facts, SyntheticSummary& sum) {
  const Timer timer;
  const std::vector<Phones> from_text = transcribe_lexicon(t.work, facts.n_common);
  const std::vector<LexEntry> valid = usable_words(from_text, t.work, facts.lex_dropped);
  MT_CHECK(int64_t(valid.size()) >= t.o.lexical_words, t.root.string(),
           ": synthetic sets: lexical_words = ", t.o.lexical_words, " but only ", valid.size(),
           " built-in words are usable (", kNumWords, " built in, ", facts.lex_dropped,
           " not read back the same by espeak-ng)");
  const PhoneStats stats(from_text);
  const std::vector<LexEntry> words = choose_words(valid, t.o.lexical_words, t.o.seed);
  SplitMix64 rng = stream(t.o.seed, kTagLexNonword);
  std::vector<std::vector<Candidate>> cands;
  for (const LexEntry& e : words) {
    cands.push_back(draw_candidates(e.ph, stats, rng));
    MT_CHECK(!cands.back().empty(), "synthetic sets: no non-word candidate for '", e.w->word, "'");
  }
  write_lexical(t, words, pick_nonwords(words, cands, t.work, facts), facts, sum);
  if (!t.o.quiet)
    std::cerr << "synthetic: lexical/dev: " << sum.lexical_files << " wavs (" << words.size() << " ids x "
              << t.o.voices.size() << " voices x 2) in " << fmt_acc(timer.s()) << " s\n";
}

// ---------------------------------------------------------------------------- syntactic

// n pairs: the four types in turn, the two subtypes alternating every four pairs; a pair whose
// grammatical sentence was already used is drawn again (up to 200 times; the small lexicon can run out).
std::vector<SynPair> make_syntactic_pairs(int64_t n, uint64_t seed) {
  SplitMix64 rng = stream(seed, kTagSynGen);
  std::vector<SynPair> pairs;
  std::set<std::string> seen;
  for (int64_t k = 0; k < n; ++k) {
    const int type = int(k % 4), sub = int((k / 4) % 2);
    SynPair p;
    for (int tries = 0; tries < 200; ++tries) {
      p = make_syntactic_pair(type, sub, rng);
      if (!seen.count(p.good)) break;
    }
    seen.insert(p.good);
    pairs.push_back(p);
  }
  return pairs;
}

// syntactic/dev: per pair and voice, the grammatical then the ungrammatical sentence's wav and gold row,
// both spoken from text with the same voice.
void write_syntactic(const Target& t, const std::vector<SynPair>& pairs, ReadmeFacts& facts, SyntheticSummary& sum) {
  const fs::path dir = t.root / "syntactic" / "dev";
  create_folder(dir);
  IdMaker ids{stream(t.o.seed, kTagSynIds), {}};
  std::vector<SynthJob> jobs;
  std::ostringstream gold, examples;
  gold << "id,filename,voice,type,subtype,correct,transcription\n";
  for (size_t k = 0; k < pairs.size(); ++k) {
    const SynPair& p = pairs[k];
    ++facts.syn_types[p.type + " / " + p.subtype];
    for (const auto& v : t.o.voices) {
      const std::string a = ids.next(), b = ids.next();
      const std::string row = "," + csv(v) + "," + p.type + "," + p.subtype + ",";
      gold << k << "," << a << row << "1," << csv(p.good) << "\n";
      gold << k << "," << b << row << "0," << csv(p.bad) << "\n";
      jobs.push_back({v, p.good, dir / (a + ".wav")});
      jobs.push_back({v, p.bad, dir / (b + ".wav")});
    }
    if (k < 8) examples << "- " << p.type << " / " << p.subtype << ": \"" << p.good << "\" vs *\"" << p.bad << "\"\n";
  }
  sum.syntactic_longer_wins = longer_wins(synthesize(jobs, t.work, t.o, "syntactic"));
  write_text(dir / "gold.csv", gold.str());
  sum.syntactic_files = int64_t(jobs.size());
  facts.syn_examples = examples.str();
}

void make_syntactic(const Target& t, ReadmeFacts& facts, SyntheticSummary& sum) {
  const Timer timer;
  const std::vector<SynPair> pairs = make_syntactic_pairs(t.o.syntactic_pairs, t.o.seed);
  write_syntactic(t, pairs, facts, sum);
  if (!t.o.quiet)
    std::cerr << "synthetic: syntactic/dev: " << sum.syntactic_files << " wavs (" << pairs.size() << " pairs x "
              << t.o.voices.size() << " voices x 2) in " << fmt_acc(timer.s()) << " s\n";
}

// ---------------------------------------------------------------------------- stories

struct StoryPlan {
  std::vector<size_t> order;  // the kStories used, in file order
  std::vector<size_t> other;  // tstory: pair n's wrong ending is pair other[n]'s correct one
};

// n stories drawn from the built-in ones, and a derangement of them by Sattolo's shuffle: a single cycle,
// so no story gets its own ending as the wrong one.
StoryPlan plan_stories(int64_t n, uint64_t seed) {
  StoryPlan p;
  SplitMix64 sel = stream(seed, kTagStorySelect);
  for (size_t i = 0; i < kNumStories; ++i) p.order.push_back(i);
  fisher_yates(p.order, sel);
  p.order.resize(size_t(n));
  SplitMix64 der = stream(seed, kTagStoryDerange);
  for (size_t i = 0; i < p.order.size(); ++i) p.other.push_back(i);
  for (size_t i = p.other.size(); i > 1; --i) std::swap(p.other[i - 1], p.other[der.below(i - 1)]);
  return p;
}

// sstory/ (topic false: the plausible-but-wrong ending) or tstory/ (topic true: another story's ending):
// <n>_pos / <n>_neg wavs of whole stories in voices[0], manifest.csv and transcripts.csv.
void write_story_task(const Target& t, const StoryPlan& plan, bool topic, SyntheticSummary& sum) {
  const Timer timer;
  const std::string name = topic ? "tstory" : "sstory";
  const fs::path dir = t.root / name;
  create_folder(dir);
  std::vector<SynthJob> jobs;
  std::ostringstream manifest, transcripts;
  manifest << "id,positive,negative\n";
  transcripts << "filename,transcription\n";
  for (size_t n = 0; n < plan.order.size(); ++n) {
    const Story& s = kStories[plan.order[n]];
    const std::string pos = std::string(s.context) + " " + s.good;
    const std::string neg = std::string(s.context) + " " + (topic ? kStories[plan.order[plan.other[n]]].good : s.bad);
    const std::string ps = std::to_string(n) + "_pos", ns = std::to_string(n) + "_neg";
    manifest << n << "," << ps << "," << ns << "\n";
    transcripts << ps << "," << csv(pos) << "\n" << ns << "," << csv(neg) << "\n";
    jobs.push_back({t.o.voices[0], pos, dir / (ps + ".wav")});
    jobs.push_back({t.o.voices[0], neg, dir / (ns + ".wav")});
  }
  (topic ? sum.tstory_longer_wins : sum.sstory_longer_wins) = longer_wins(synthesize(jobs, t.work, t.o, name));
  write_text(dir / "manifest.csv", manifest.str());
  write_text(dir / "transcripts.csv", transcripts.str());
  if (!t.o.quiet)
    std::cerr << "synthetic: " << name << ": " << jobs.size() << " wavs (" << plan.order.size() << " pairs, voice "
              << t.o.voices[0] << ") in " << fmt_acc(timer.s()) << " s\n";
}

void make_stories(const Target& t, SyntheticSummary& sum) {
  const StoryPlan plan = plan_stories(t.o.stories, t.o.seed);
  write_story_task(t, plan, false, sum);
  write_story_task(t, plan, true, sum);
  sum.story_pairs = t.o.stories;
}

// ---------------------------------------------------------------------------- README
// The README says loudly that the data is synthetic, then how each set was made, so that nobody reads a
// number measured on it as a benchmark result.

void readme_intro(std::ostream& md, const SyntheticOptions& o, const SyntheticSummary& sum) {
  const size_t nv = o.voices.size();
  md << kReadmeTitle << "\n\n"
     << "**SYNTHETIC DATA. Every clip here was produced by a text-to-speech engine (espeak-ng, a formant "
        "synthesiser), not recorded from people. Accuracies measured on these sets are NOT comparable to "
        "published sWUGGY / sBLIMP / sStoryCloze / tStoryCloze numbers**: the items, voices, sizes, "
        "frequency counts and audio all differ from the official benchmarks. Use them to check that a "
        "scoring pipeline runs end to end and to compare checkpoints with each other on identical inputs.\n\n"
     << "The folders use the official layouts, so the same scorer runs on the real data:\n\n"
     << "| folder | layout | size |\n|---|---|---|\n"
     << "| `lexical/dev/` | `<11-letter id>.wav` + `gold.csv` "
        "(`id,filename,voice,frequency,word,phones,length,correct`) | "
     << sum.lexical_files << " wavs, " << o.lexical_words << " ids x " << nv << " voices x 2 |\n"
     << "| `syntactic/dev/` | `<11-letter id>.wav` + `gold.csv` "
        "(`id,filename,voice,type,subtype,correct,transcription`) | "
     << sum.syntactic_files << " wavs, " << o.syntactic_pairs << " pairs x " << nv << " voices x 2 |\n"
     << "| `sstory/` | `<n>_pos.wav`, `<n>_neg.wav` + `manifest.csv` (`id,positive,negative`) + "
        "`transcripts.csv` | "
     << sum.story_pairs << " pairs |\n"
     << "| `tstory/` | same as `sstory/` | " << sum.story_pairs << " pairs |\n\n"
     << "`filename`, `positive` and `negative` hold file stems (no folder, no `.wav`). In each `gold.csv` the "
        "rows come as id, voice, correct row, then its incorrect row, so pairing the i-th `correct==1` row "
        "with the i-th `correct==0` row (as the official ZeroSpeech 2021 scorer does) gives the right "
        "pairs.\n\n";
}

void readme_method(std::ostream& md, const SyntheticOptions& o, const ReadmeFacts& facts) {
  std::string voices;
  for (size_t i = 0; i < o.voices.size(); ++i) voices += (i ? ", " : "") + std::string("`") + o.voices[i] + "`";
  md << "## How the sets were made\n\n"
     << "- Generator: `mt::eval::make_synthetic_sets` (`src/eval/synthetic_sets.cpp`), **seed = " << o.seed
     << "**. Every choice comes from a splitmix64 generator seeded with it, so the same seed and espeak-ng "
        "version give the same gold files, file names and audio.\n"
     << "- Engine: " << facts.espeak_version << "; speed `-s " << o.speed << "`; voices " << voices
     << ". Output: 22,050 Hz mono 16-bit PCM (resample, e.g. to 24 kHz for Mimi).\n";
  if (o.equalize)
    md << "- Post-processing, the same for every clip: leading and trailing silence trimmed (first/last sample "
          "above -50 dBFS, 10 ms kept on each side), then scaled to an RMS of -22 dBFS (less if the peak "
          "would exceed -0.5 dBFS), so level gives nothing away.\n";
  else
    md << "- No post-processing: the clips are espeak-ng's raw output (silence and level untouched).\n";
}

void readme_lexical(std::ostream& md, const ReadmeFacts& facts) {
  md << "\n### lexical (mini-sWUGGY: word vs non-word)\n\n"
     << "- Words come from a built-in list of " << kNumWords
     << " English words. The `frequency` column holds **rough spoken-frequency counts chosen by hand** so "
        "that every ZeroSpeech band appears (0 = rare, out-of-vocabulary-like; 1-4; 5-19; 20-99; >= 100). "
        "They are not LibriSpeech counts, which the official gold uses.\n"
     << "- Phonemes: `espeak-ng -x --sep` with `en-us`; the word list was filtered to words whose phoneme "
        "string espeak-ng reads back unchanged ("
     << facts.lex_dropped << " dropped).\n"
     << "- Non-words, Wuggy-style: one phoneme of the word is replaced by another of the same class "
        "(vowel for vowel, consonant for consonant; syllabic consonants and the glottal stop are kept), "
        "so the length and CV structure are kept. Replacements are drawn in proportion to how often the "
        "phoneme occurs in the built-in words; replacements that sound the same in espeak (e.g. `a`/`aa`, "
        "`t`/`t#`) are not used. As a rough phonotactic filter, candidates whose phoneme trigrams around the "
        "change (word edges included) all occur in real words are preferred, then those whose bigrams do "
        "(non-words chosen: "
     << facts.lex_tiers[0] << " trigram-attested, " << facts.lex_tiers[1] << " bigram-attested, " << facts.lex_tiers[2]
     << " neither). Candidates that sound like one of the built-in words or one of " << facts.n_common
     << " common English words (same phoneme string up to the same-sound groups) are rejected, and espeak-ng "
        "must read the candidate back unchanged. Phoneme frequencies and n-grams are counted over those same "
        "words. This is not a full dictionary check, so a few non-words may still be rare real words.\n"
     << "- The word and its non-word are both synthesised from phonemes (`[[...]]`) with the same voice, so "
        "spelling-to-sound rules give nothing away. `en-gb` voices read the same `en-us` phoneme strings.\n"
     << "- `word` is empty for non-words; their phonemes are in `phones` (space separated espeak-ng "
        "mnemonics, stress marks dropped). `length` = number of phonemes. `id` is shared by a word and its "
        "non-word and repeated across voices.\n"
     << "- Items per band:";
  for (const auto& [b, n] : facts.lex_bands) md << " " << b << ": " << n << ";";
  md << "\n\n| id | word | frequency | word phonemes | non-word phonemes |\n|---|---|---|---|---|\n" << facts.lex_table;
}

void readme_syntactic(std::ostream& md, const ReadmeFacts& facts) {
  md << "\n### syntactic (mini-sBLIMP: grammatical vs ungrammatical sentence)\n\n"
     << "- Minimal pairs filled from templates and a small built-in lexicon, over the ZeroSpeech types "
        "that can be templated; both members of a pair use the same voice and are spoken from text. "
        "`transcription` is the spoken sentence. The items are not BLiMP items.\n"
     << "- Pairs per type / subtype:";
  for (const auto& [ty, n] : facts.syn_types) md << " " << ty << ": " << n << ";";
  md << "\n- Examples:\n" << facts.syn_examples;
}

void readme_stories(std::ostream& md, const SyntheticOptions& o) {
  md << "\n### sstory / tstory (mini spoken StoryCloze)\n\n"
     << "- " << kNumStories << " short five-sentence everyday stories written for this project (not ROCStories), "
     << o.stories << " of them used. Each file is a whole story: four context sentences and an ending, spoken "
     << "with one voice (`" << o.voices[0] << "`), as in the original.\n"
     << "- `sstory`: the negative ending is plausible on its own but contradicts the context.\n"
     << "- `tstory`: the negative ending is the correct ending of another story (a fixed derangement drawn "
        "from the seed).\n"
     << "- `manifest.csv` names each pair's positive and negative file explicitly; do not rely on sort "
        "order. `transcripts.csv` holds the text of every file.\n";
}

void readme_checks(std::ostream& md, const SyntheticSummary& sum) {
  md << "\n## Confound check: \"the longer clip is the correct one\"\n\n"
     << "Accuracy of choosing the longer clip (ties 0.5), measured on the files as written. A model score "
        "that only tracks duration would get about this; values far from 0.5 mean duration alone helps.\n\n"
     << "| set | longer-clip accuracy |\n|---|---|\n"
     << "| lexical | " << fmt_acc(sum.lexical_longer_wins) << " |\n"
     << "| syntactic | " << fmt_acc(sum.syntactic_longer_wins) << " |\n"
     << "| sstory | " << fmt_acc(sum.sstory_longer_wins) << " |\n"
     << "| tstory | " << fmt_acc(sum.tstory_longer_wins) << " |\n"
     << "\n## Limitations\n\n"
     << "- Tiny sets: with a few dozen pairs one item moves accuracy by several points; report the item count "
        "and an interval.\n"
     << "- One formant TTS engine with robotic, highly regular acoustics: far from the training distribution "
        "of a speech LM, and far from the official sets' synthesis.\n"
     << "- Hand-chosen frequency counts, a small homophone check, and hand-written templates and stories.\n";
}

std::string readme(const SyntheticOptions& o, const SyntheticSummary& sum, const ReadmeFacts& facts) {
  std::ostringstream md;
  readme_intro(md, o, sum);
  readme_method(md, o, facts);
  if (o.lexical_words > 0) readme_lexical(md, facts);
  if (o.syntactic_pairs > 0) readme_syntactic(md, facts);
  if (o.stories > 0) readme_stories(md, o);
  readme_checks(md, sum);
  return md.str();
}

// ---------------------------------------------------------------------------- the output folder

// Prepares root: creates it, or clears the folders of an earlier run. Refuses anything else that is
// not empty, so real benchmark data is never overwritten.
void prepare_root(const fs::path& root) {
  const std::string r = root.string();
  if (fs::exists(root)) {
    MT_CHECK(fs::is_directory(root), r, ": synthetic sets: exists and is not a folder");
    const bool empty = fs::directory_iterator(root) == fs::directory_iterator();
    if (!empty) {
      const std::string first = split(read_text(root / "README.md"), '\n')[0];
      MT_CHECK(first == kReadmeTitle, r,
               ": synthetic sets: refusing to write here: the folder is not empty "
               "and was not made by this generator (no README.md starting with \"",
               kReadmeTitle, "\"). Pick a new or empty folder.");
      for (const char* sub : {"lexical", "syntactic", "sstory", "tstory", ".work", "README.md"}) {
        std::error_code ec;
        fs::remove_all(root / sub, ec);
        MT_CHECK(!ec, (root / sub).string(), ": cannot remove it: ", ec.message());
      }
    }
  }
  create_folder(root / ".work");
}

// Removes the scratch folder (scripts, worker logs, phoneme input) however the run ends.
struct WorkDirGuard {
  fs::path p;
  ~WorkDirGuard() {
    std::error_code ec;
    fs::remove_all(p, ec);
  }
};

void check_options(const std::string& root, const SyntheticOptions& o) {
  MT_CHECK(!root.empty(), "synthetic sets: empty output folder");
  MT_CHECK(!o.voices.empty(), root, ": synthetic sets: no voices given");
  MT_CHECK(o.lexical_words >= 0 && o.syntactic_pairs >= 0 && o.stories >= 0, root,
           ": synthetic sets: sizes must be >= 0 (lexical_words ", o.lexical_words, ", syntactic_pairs ",
           o.syntactic_pairs, ", stories ", o.stories, ")");
  MT_CHECK(o.stories == 0 || o.stories >= 2, root,
           ": synthetic sets: stories must be 0 or >= 2 (tstory takes its wrong endings from other stories), "
           "got ",
           o.stories);
  MT_CHECK(o.stories <= int64_t(kNumStories), root, ": synthetic sets: stories = ", o.stories, " but only ",
           kNumStories, " stories are built in");
  MT_CHECK(o.speed >= 80 && o.speed <= 450, root, ": synthetic sets: speed must be in [80, 450], got ", o.speed);
  for (const auto& v : o.voices)
    MT_CHECK(!v.empty() && v.find_first_of(" \t\n'\"") == std::string::npos, root, ": synthetic sets: bad voice name '",
             v, "'");
}

}  // namespace

std::string random_letters_id(SplitMix64& rng, int n) {
  static const char kLetters[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  std::string s;
  for (int i = 0; i < n; ++i) s += kLetters[rng.below(52)];
  return s;
}

bool espeak_available() {
  CmdResult r = run_capture("command -v espeak-ng");
  return r.rc == 0 && !trim(r.out).empty();
}

SyntheticSummary make_synthetic_sets(const std::string& root_str, const SyntheticOptions& o) {
  check_options(root_str, o);
  require_espeak();
  validate_voices(o.voices);

  const fs::path root = fs::absolute(fs::path(root_str));
  prepare_root(root);
  const Target t{root, root / ".work", o};
  WorkDirGuard guard{t.work};
  SyntheticSummary sum;
  sum.root = root.string();
  ReadmeFacts facts;
  facts.espeak_version = espeak_version();

  if (o.lexical_words > 0) make_lexical(t, facts, sum);
  if (o.syntactic_pairs > 0) make_syntactic(t, facts, sum);
  if (o.stories > 0) make_stories(t, sum);
  write_text(root / "README.md", readme(o, sum, facts));
  return sum;
}

}  // namespace mt::eval
