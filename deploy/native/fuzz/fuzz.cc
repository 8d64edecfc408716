// mscnn-fuzz: a bounded, seeded mutation fuzz of mscnn-run's readers, built with
// AddressSanitizer and UBSan (make -C deploy/native fuzz). Run by
// tests/deploy/test_native_fuzz.py, so `make test` runs it on a fixed time budget.
//
//   mscnn-fuzz TARGET --seed N --seconds S --work DIR [--bundle DIR] SEED_FILE...
//
// TARGET is what each case is fed to:
//   manifest  ParseManifest: the JSON reader (tvm-ffi's parser and our scan) and the checks
//   npy       ParseNpy from memory, and ReadNpy from a file every 8th case
//   elf       CheckElfLibrary on a private in-memory file, as model.so is checked
//   bundle    Bundle::Open, VerifyFiles, CheckLibrary and the golden .npy files, on a copy
//             of the bundle at --bundle whose manifest.json is the case
//   raw       RawSource, --stream's reader, to the end of a file: the check of its first
//             bytes (.npy, .npz, text) and of every sample, 1 to 3 leads, short reads
// The contract: every case returns normally or throws a Refusal (or JsonError) whose
// message, escaped as main() prints it, is one line of at most 4 KiB; anything else is
// a finding (saved under DIR). A sanitizer report ends the run at once (the case that
// caused it is saved to DIR/crash-TARGET.bin first). Exit 0: no findings.
//
// Mutations (1 to 4 per case) of a seed from the pool: bit flips, random bytes,
// insertions, deletions, copies of a range, tokens that matter to the readers (quotes,
// escapes, huge numbers, NaN, deep brackets, .npy header fields), splices of two seeds
// and truncation. A case whose outcome (accepted, or the kind of refusal) was not seen
// before joins the pool: a cheap stand-in for coverage feedback.

#include <fcntl.h>
#include <sanitizer/common_interface_defs.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "../src/bundle.h"
#include "../src/elf.h"
#include "../src/json.h"
#include "../src/manifest.h"
#include "../src/npy.h"
#include "../src/raw.h"
#include "../src/refusal.h"
#include "../src/text.h"

namespace {

using mscnn::Refusal;

// splitmix64: one seed gives the same sequence of cases on every machine.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t Next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::size_t Below(std::size_t n) { return n == 0 ? 0 : std::size_t(Next() % n); }

 private:
  std::uint64_t state_;
};

const char* const kTokens[] = {
    "\"", "\\", "\\u0000", "\\ud800", "\\udc00\\ud800", "\\n", "{", "}", "[", "]", ",", ":",
    "null", "true", "false", "NaN", "-Infinity", "1e999", "-0", "0.5", "1.0",
    "99999999999999999999", "-9223372036854775808", "9223372036854775807", "4294967296",
    "\"files\"", "\"bytes\"", "\"sha256\"", "\"shape\"", "\"golden\"", "\"schema_version\"",
    "\"model.so\"", "\"../x\"", "\"a/../b\"", "\"/etc/passwd\"", "\xff", "\xc0\x80",
    "\xe2\x80\xa8", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "'descr': '<f4', ", "'fortran_order': True",
    "'shape': (", "), }", "(0,)", "(1, 1, 99999999999)", "\x93NUMPY\x01\x00", "\x93NUMPY\x02\x00",
    "\x7f" "ELF\x02\x01\x01", "\x7f" "ELF\x01\x01\x01", "\xff\xff\xff\xff", "\x00\x00\x00\x00",
    "PK\x03\x04", "\n", "\r\n", "time,ecg\n", "\x00\x40\x1c\x46", "\x01\x40\x1c\xc6",
    "\x00\x00\xc0\x7f", "\x0a\xd7\x23\x3c"};

std::string Mutate(const std::vector<std::string>& pool, Rng& rng) {
  std::string s = pool[rng.Below(pool.size())];
  const std::size_t ops = 1 + rng.Below(4);
  for (std::size_t k = 0; k < ops; ++k) {
    const std::size_t at = rng.Below(s.size() + 1);
    switch (rng.Below(9)) {
      case 0:
        if (!s.empty()) s[rng.Below(s.size())] ^= char(1u << rng.Below(8));
        break;
      case 1:
        if (!s.empty()) s[rng.Below(s.size())] = char(rng.Next());
        break;
      case 2:
        for (std::size_t n = 1 + rng.Below(8); n > 0; --n) s.insert(at, 1, char(rng.Next()));
        break;
      case 3:
        s.erase(at, 1 + rng.Below(s.size() / 8 + 16));
        break;
      case 4: {
        const std::size_t from = rng.Below(s.size() + 1);
        s.insert(at, s.substr(from, 1 + rng.Below(64)));
        break;
      }
      case 5:
      case 6:
        s.insert(at, kTokens[rng.Below(sizeof kTokens / sizeof kTokens[0])]);
        break;
      case 7: {
        const std::string& other = pool[rng.Below(pool.size())];
        s = s.substr(0, at) + other.substr(std::min(other.size(), rng.Below(other.size() + 1)));
        break;
      }
      default:
        s.resize(at);
    }
  }
  if (s.size() > (1u << 20)) s.resize(1u << 20);
  return s;
}

// What the case did, for the pool's novelty test: "ok", or the refusal without its
// numbers and quoted values; a quoted key path ("input.shape") is kept, since it tells
// refusals apart, while quoted values vary with every mutation.
std::string OutcomeKind(const std::string& message) {
  std::string kind, quoted;
  char quote = 0;
  for (char c : message.substr(0, 200)) {
    if (quote == 0 && (c == '"' || c == '\'')) {
      quote = c;
      quoted.clear();
    } else if (c == quote) {
      const bool key = quoted.size() <= 32 && quoted.find_first_not_of(
          "abcdefghijklmnopqrstuvwxyz_.[]") == std::string::npos;
      if (key) kind += quoted;
      quote = 0;
    } else if (quote != 0) {
      quoted.push_back(c);
    } else if (!(c >= '0' && c <= '9')) {
      kind.push_back(c);
    }
  }
  return kind;
}

struct Context {
  std::string target, work, bundle;
  std::string current;  // the case being run, for the sanitizer's death callback
  int serial = 0;
};
Context g_ctx;

// Rewrites `path` in place and cuts it to size: opening with O_TRUNC instead makes ext4
// flush the file at close (its auto_da_alloc rule), 5 ms a case.
void WriteFile(const std::string& path, const std::string& bytes) {
  mscnn::Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) return;
  for (std::size_t at = 0; at < bytes.size();) {
    const ssize_t n = ::write(fd.get(), bytes.data() + at, bytes.size() - at);
    if (n <= 0) return;
    at += std::size_t(n);
  }
  if (::ftruncate(fd.get(), off_t(bytes.size())) != 0) return;
}

void SaveCrash() { WriteFile(g_ctx.work + "/crash-" + g_ctx.target + ".bin", g_ctx.current); }

// One case through the target; returns the outcome's text ("ok" or the refusal).
std::string RunCase(const std::string& data) {
  const std::string& t = g_ctx.target;
  if (t == "manifest") {
    mscnn::ParseManifest(data, "manifest.json");
  } else if (t == "npy") {
    if (++g_ctx.serial % 8 == 0) {
      WriteFile(g_ctx.work + "/case.npy", data);
      mscnn::ReadNpy(g_ctx.work + "/case.npy", "input case.npy");
    } else {
      mscnn::ParseNpy(data, "input case.npy");
    }
  } else if (t == "raw") {
    // Leads and read size from the case's size: each case one way, every way in the run.
    WriteFile(g_ctx.work + "/case.f32", data);
    mscnn::RawSource source(g_ctx.work + "/case.f32", 1 + std::int64_t(data.size() % 3),
                            1 + std::int64_t(data.size() / 3 % 16));
    while (!source.Next().empty()) {
    }
  } else if (t == "elf") {
    mscnn::Fd fd(::memfd_create("model.so", MFD_CLOEXEC));
    if (::write(fd.get(), data.data(), data.size()) != ssize_t(data.size())) return "short write";
    mscnn::CheckElfLibrary(fd.get(), data.size(), "x86_64", "model.so");
  } else {
    WriteFile(g_ctx.bundle + "/manifest.json", data);
    mscnn::Bundle bundle = mscnn::Bundle::Open(g_ctx.bundle);
    bundle.RequireArch(bundle.manifest().arch);
    bundle.VerifyFiles();
    bundle.CheckLibrary(bundle.manifest().arch);
    for (const mscnn::GoldenPair& pair : bundle.manifest().golden) {
      mscnn::ParseNpy(bundle.Verified(pair.input), "golden input");
      mscnn::ParseNpy(bundle.Verified(pair.output), "golden output");
    }
  }
  return "ok";
}

// Runs one case and applies the contract; a non-empty return is a finding.
std::string Judge(const std::string& data, std::string* outcome) {
  std::string message;
  try {
    *outcome = RunCase(data);
    return "";
  } catch (const Refusal& e) {
    message = e.what();
  } catch (const mscnn::JsonError& e) {
    message = e.what();
  } catch (const std::exception& e) {
    return std::string("escaped exception: ") + e.what();
  } catch (...) {
    return "escaped exception of an unknown type";
  }
  *outcome = OutcomeKind(message);
  const std::string shown = mscnn::Printable(message);
  if (shown.empty()) return "empty message";
  if (shown.size() > 4096) return "message of " + std::to_string(shown.size()) + " bytes";
  if (shown.find('\n') != std::string::npos) return "message of several lines";
  return "";
}

std::vector<std::string> ReadSeeds(const std::vector<std::string>& paths) {
  std::vector<std::string> seeds;
  for (const std::string& path : paths) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;  // a FIFO would block
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    seeds.push_back(text.str());
  }
  if (seeds.empty()) seeds.push_back("");
  return seeds;
}

int Fuzz(std::uint64_t seed, double seconds, std::vector<std::string> pool) {
  Rng rng(seed);
  std::set<std::string> seen;
  long cases = 0, accepted = 0, findings = 0;
  const auto start = std::chrono::steady_clock::now();
  const auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  // Every seed as it is first, then mutations until the time is up.
  for (std::size_t i = 0; elapsed() < seconds; ++i) {
    g_ctx.current = i < pool.size() ? pool[i] : Mutate(pool, rng);
    std::string outcome;
    const std::string finding = Judge(g_ctx.current, &outcome);
    ++cases;
    accepted += outcome == "ok";
    if (!finding.empty()) {
      WriteFile(g_ctx.work + "/finding-" + g_ctx.target + "-" + std::to_string(findings) + ".bin",
                g_ctx.current);
      std::fprintf(stderr, "finding %ld (%s): %s\n", findings, g_ctx.target.c_str(),
                   finding.c_str());
      ++findings;
    }
    if (seen.insert(outcome).second && i >= pool.size() && pool.size() < 512) {
      pool.push_back(g_ctx.current);
    }
  }
  std::printf("fuzz %s: %ld cases in %.1f s (%.0f/s), seed %llu, %ld accepted, %zu distinct "
              "outcomes, %ld findings\n",
              g_ctx.target.c_str(), cases, elapsed(), double(cases) / elapsed(),
              static_cast<unsigned long long>(seed), accepted, seen.size(), findings);
  return findings == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t seed = 0;
  double seconds = 5;
  std::vector<std::string> seed_files;
  if (argc < 2) {
    std::fprintf(stderr, "usage: mscnn-fuzz TARGET --seed N --seconds S --work DIR "
                         "[--bundle DIR] SEED_FILE...\n");
    return 2;
  }
  g_ctx.target = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--seed" && has_value) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--seconds" && has_value) {
      seconds = std::strtod(argv[++i], nullptr);
    } else if (arg == "--work" && has_value) {
      g_ctx.work = argv[++i];
    } else if (arg == "--bundle" && has_value) {
      g_ctx.bundle = argv[++i];
    } else {
      seed_files.push_back(arg);
    }
  }
  const std::set<std::string> targets = {"manifest", "npy", "elf", "bundle", "raw"};
  if (targets.count(g_ctx.target) == 0 || g_ctx.work.empty() ||
      (g_ctx.target == "bundle" && g_ctx.bundle.empty())) {
    std::fprintf(stderr, "error: give a TARGET (manifest, npy, elf, bundle, raw), --work DIR, and "
                         "--bundle DIR for the bundle target\n");
    return 2;
  }
  __sanitizer_set_death_callback(SaveCrash);
  return Fuzz(seed, seconds, ReadSeeds(seed_files));
}
