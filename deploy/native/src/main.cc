// mscnn-run: runs a compiled mscnn-edge bundle on a device with no Python.
//
//   mscnn-run BUNDLE --check [--device cpu|cuda]
//   mscnn-run BUNDLE --input x.npy --output y.npy [--device cpu|cuda]
//   mscnn-run BUNDLE --input x.npy --detect [--json]
//   mscnn-run BUNDLE --stream [--input FILE|-] [--detect]
//   mscnn-run BUNDLE --info
//   mscnn-run --tolerances
//
// Exit codes: 0 done (and every golden input matched), 1 a golden output did not match,
// 2 refused: the bundle, the input, the arguments or the runtime failed, with one
// `error:` line on stderr.

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "bundle.h"
#include "model.h"
#include "npy.h"
#include "refusal.h"
#include "rpeaks.h"
#include "stream.h"
#include "text.h"

namespace mscnn {
namespace {

#if defined(__x86_64__)
constexpr const char* kRunnerArch = "x86_64";
#elif defined(__aarch64__)
constexpr const char* kRunnerArch = "aarch64";
#elif defined(__arm__) && defined(__ARM_ARCH) && __ARM_ARCH >= 7
constexpr const char* kRunnerArch = "armv7";
#else
#error "mscnn-run targets x86_64, aarch64 and armv7 only (the bundle architectures)"
#endif

constexpr const char* kVersion = "0.1.0";

// Must match deploy/parity.py TOLERANCES, which a test compares with `--tolerances`: a
// row per device kind for fp32 bundles, per precision for the others.
struct Tolerance {
  const char* device;
  double normalised;
};
constexpr Tolerance kTolerances[] = {
    {"cpu", 1e-5}, {"cuda", 1e-4}, {"int8", 0.0}, {"fp16", 2e-2}};

constexpr const char* kUsage =
    "usage: mscnn-run BUNDLE --check [--device cpu|cuda]\n"
    "       mscnn-run BUNDLE --input X.npy --output Y.npy [--device cpu|cuda]\n"
    "       mscnn-run BUNDLE --input X.npy --detect [--json]   (R-peak detector bundles)\n"
    "       mscnn-run BUNDLE --stream [--input FILE|-] [--detect]  (stream bundles; raw\n"
    "                        little-endian float32 samples, leads interleaved)\n"
    "       mscnn-run BUNDLE --info\n"
    "       mscnn-run --tolerances | --version | --help\n"
    "\n"
    "BUNDLE is a folder made by `python -m compile build` (manifest.json, model.so,\n"
    "golden/). Every file the manifest lists is checked against its SHA-256 before\n"
    "model.so is loaded. Exit codes: 0 ok, 1 golden mismatch, 2 refused (see stderr).\n";

struct Options {
  std::string bundle;
  std::string mode;  // "check", "run", "info", "tolerances", "version", "help"
  std::string input;
  std::string output;
  std::string device;
  bool detect = false;
  bool json = false;
};

void SetMode(Options* o, const std::string& mode) {
  if (!o->mode.empty() && o->mode != mode) {
    throw Refusal("--" + o->mode + " and --" + mode + " cannot be combined; run mscnn-run --help");
  }
  o->mode = mode;
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  bool have_input = false, have_output = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    bool inline_value = false;
    if (arg.rfind("--", 0) == 0) {
      std::size_t eq = arg.find('=');
      if (eq != std::string::npos) {
        value = arg.substr(eq + 1);
        arg = arg.substr(0, eq);
        inline_value = true;
      }
    }
    auto take_value = [&](const char* flag) {
      if (inline_value) return value;
      if (i + 1 >= argc) throw Refusal(std::string(flag) + " needs a value; run mscnn-run --help");
      return std::string(argv[++i]);
    };
    if (arg == "--check") {
      SetMode(&o, "check");
    } else if (arg == "--info") {
      SetMode(&o, "info");
    } else if (arg == "--tolerances") {
      SetMode(&o, "tolerances");
    } else if (arg == "--version") {
      SetMode(&o, "version");
    } else if (arg == "--help" || arg == "-h") {
      SetMode(&o, "help");
    } else if (arg == "--stream") {
      SetMode(&o, "stream");
    } else if (arg == "--detect") {
      o.detect = true;
    } else if (arg == "--json") {
      o.json = true;
    } else if (arg == "--input") {
      o.input = take_value("--input");
      have_input = true;
    } else if (arg == "--output") {
      o.output = take_value("--output");
      have_output = true;
    } else if (arg == "--device") {
      o.device = take_value("--device");
      if (o.device != "cpu" && o.device != "cuda") {
        throw Refusal("--device must be cpu or cuda, not '" + o.device + "'");
      }
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw Refusal("unknown option " + arg + "; run mscnn-run --help");
    } else if (o.bundle.empty()) {
      o.bundle = arg;
    } else {
      throw Refusal("more than one bundle given (" + o.bundle + ", " + arg +
                    "); run mscnn-run --help");
    }
  }
  if (o.json && !o.detect) throw Refusal("--json goes with --detect; run mscnn-run --help");
  if (o.mode == "stream") {
    if (have_output) throw Refusal("--stream prints to stdout; drop --output");
    if (o.json) throw Refusal("--json goes with --detect on a window bundle, not --stream");
    if (!have_input) o.input = "-";
    if (o.input.empty()) throw Refusal("--input needs a file name, or - for stdin");
  } else if (o.detect) {
    if (!o.mode.empty()) {
      throw Refusal("--detect goes with --input X.npy or --stream, not --" + o.mode +
                    (o.mode == "check" ? " (which compares a detector's beats already)" : ""));
    }
    if (have_output) throw Refusal("--detect prints beats and heart rate; drop --output");
    if (!have_input || o.input.empty()) {
      throw Refusal("--detect needs --input X.npy (the record), or --stream");
    }
    SetMode(&o, "detect");
  } else if (have_input || have_output) {
    if (!(have_input && have_output)) {
      throw Refusal("--input and --output go together: give both, or use --check");
    }
    if (o.input.empty() || o.output.empty()) throw Refusal("--input and --output need file names");
    SetMode(&o, "run");
  }
  if (o.mode.empty()) {
    throw Refusal(o.bundle.empty() ? "no bundle given; run mscnn-run --help"
                                   : "say what to do with the bundle: --check, --info or "
                                     "--input X.npy --output Y.npy");
  }
  const bool needs_bundle = o.mode == "check" || o.mode == "run" || o.mode == "info" ||
                            o.mode == "detect" || o.mode == "stream";
  if (needs_bundle && o.bundle.empty()) throw Refusal("--" + o.mode + " needs a BUNDLE folder");
  if (!needs_bundle && !o.bundle.empty()) {
    throw Refusal("--" + o.mode + " takes no bundle; run mscnn-run --help");
  }
  if (!o.device.empty() && o.mode != "check" && o.mode != "run" && o.mode != "detect" &&
      o.mode != "stream") {
    throw Refusal("--device applies to --check, --detect, --stream and --input/--output only");
  }
  return o;
}

// Runtime libraries ship in lib/ next to the executable (the rpath says the same).
std::string RuntimeDir() {
  std::vector<char> path(4096);
  ssize_t n = ::readlink("/proc/self/exe", path.data(), path.size() - 1);
  if (n <= 0) return "lib";
  std::string exe(path.data(), std::size_t(n));
  std::size_t slash = exe.rfind('/');
  return (slash == std::string::npos ? std::string(".") : exe.substr(0, slash)) + "/lib";
}

double ToleranceOf(const std::string& device) {
  for (const Tolerance& t : kTolerances) {
    if (device == t.device) return t.normalised;
  }
  throw Refusal("no tolerance for device " + device);
}

// Manifest strings on stdout, with control characters escaped: a golden case's name
// must not be able to print a forged "check: pass" line.
std::string Show(const std::string& text) { return Printable(text); }

std::string DeviceFor(const Bundle& bundle, const Options& o) {
  const Manifest& m = bundle.manifest();
  if (!o.device.empty() && o.device != m.device) {
    throw Refusal("bundle " + Clip(m.name) + " is built for device " + m.device + " (target " +
                  Clip(m.target_name) + "), not " + o.device + "; drop --device or pass --device " +
                  m.device);
  }
  return m.device;
}

// The checks that must pass before model.so may be loaded (loading runs its code).
void Admit(Bundle& bundle) {
  bundle.RequireArch(kRunnerArch);
  bundle.VerifyFiles();
  bundle.CheckLibrary(kRunnerArch);
}

std::string Locate(const Manifest& m, std::int64_t flat) {
  const std::int64_t leads = m.input.shape[1], samples = m.input.shape[2];
  const std::int64_t batch = flat / (leads * samples);
  const std::int64_t lead = (flat / samples) % leads;
  const std::int64_t sample = flat % samples;
  std::string where = "batch " + std::to_string(batch) + ", lead " + std::to_string(lead);
  if (lead < std::int64_t(m.leads.size())) where += " (" + Clip(m.leads[std::size_t(lead)]) + ")";
  return where + ", sample " + std::to_string(sample);
}

void RequireFiniteInput(const Manifest& m, const Array& x, const std::string& label) {
  std::int64_t count = 0;
  std::int64_t first = FirstNonFinite(x.data, &count);
  if (first >= 0) {
    throw Refusal(label + " holds " + std::to_string(count) +
                  " NaN or Inf value(s), the first at " + Locate(m, first) +
                  "; the model needs finite samples: fill gaps (interpolate or zero) first");
  }
}

double Millis(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// The parity rule of deploy/parity.py: max |got - expected| over max |expected|.
struct Verdict {
  bool passed = false;
  double max_abs = 0.0;
  double normalised = 0.0;
  std::string detail;
};

Verdict Compare(const Array& got, const Array& expected, double tolerance) {
  Verdict v;
  if (got.shape != expected.shape) {
    v.max_abs = v.normalised = INFINITY;
    v.detail = "output shape " + ShapeText(got.shape) + " != expected " + ShapeText(expected.shape);
    return v;
  }
  std::int64_t bad = 0;
  if (FirstNonFinite(got.data, &bad) >= 0) {
    v.max_abs = v.normalised = NAN;
    v.detail = "output holds NaN or Inf";
    return v;
  }
  double max_abs = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < got.data.size(); ++i) {
    const double g = got.data[i], e = expected.data[i];
    const double diff = std::fabs(g - e);
    if (diff > max_abs) max_abs = diff;
    if (std::fabs(e) > scale) scale = std::fabs(e);
  }
  v.max_abs = max_abs;
  v.normalised = scale > 0.0 ? max_abs / scale : max_abs;
  v.passed = v.normalised <= tolerance;
  return v;
}

// The logits of record `b` of a window detector's output (batch, frames, 1), in double.
std::vector<double> WindowLogits(const Array& y, std::size_t b) {
  const std::size_t batch = y.shape.empty() ? 1 : std::size_t(y.shape[0]);
  const std::size_t frames = y.data.size() / batch;
  return std::vector<double>(y.data.begin() + std::ptrdiff_t(b * frames),
                             y.data.begin() + std::ptrdiff_t((b + 1) * frames));
}

// Whether two outputs give the same beats for every record of the batch (the
// manifest's rule over `samples` samples per record).
bool SameBeats(const Array& got, const Array& expected, const DetectRule& rule,
               std::int64_t samples) {
  if (got.shape != expected.shape) return false;
  std::int64_t bad = 0;
  if (FirstNonFinite(got.data, &bad) >= 0) return false;
  const std::size_t batch = got.shape.empty() ? 1 : std::size_t(got.shape[0]);
  for (std::size_t b = 0; b < batch; ++b) {
    if (DetectRpeaks(WindowLogits(got, b), rule, samples) !=
        DetectRpeaks(WindowLogits(expected, b), rule, samples)) {
      return false;
    }
  }
  return true;
}

// Parsed by deploy/sweep.py: `(beats|decisions)=(\d+)/(\d+)`.
std::string BeatsText(const Manifest& m, int identical, int cases) {
  if (!m.has_detect) return "";
  return " beats=" + std::to_string(identical) + "/" + std::to_string(cases);
}

// The check's last line and exit status. fp16 bundles report their beats: their golden
// outputs are fp32 PyTorch's, and a reduced precision is judged on accuracy (held-out
// records), not on identity.
int Conclude(const Manifest& m, int passed, std::size_t cases, double worst, int same_beats,
             int beat_cases) {
  const bool beats_gate = m.precision != "fp16";
  const bool ok = passed == int(cases) && (same_beats == beat_cases || !beats_gate);
  std::printf("check: %s %d/%zu worst_normalised=%.3g%s%s\n", ok ? "pass" : "FAIL", passed,
              cases, worst, BeatsText(m, same_beats, beat_cases).c_str(),
              beats_gate || !m.has_detect ? "" : " (reported, not judged: fp16)");
  std::fflush(stdout);
  return ok ? 0 : 1;
}

void PrintCase(const std::string& name, const Verdict& v, double tolerance, double run_ms) {
  std::printf("%s: %s max_abs=%.3g normalised=%.3g tolerance=%g run_ms=%.1f%s%s%s\n",
              Show(name).c_str(), v.passed ? "pass" : "FAIL", v.max_abs, v.normalised,
              tolerance, run_ms, v.detail.empty() ? "" : " (", v.detail.c_str(),
              v.detail.empty() ? "" : ")");
}

int CheckStream(Bundle& bundle, const std::string& device, double tolerance);

int Check(const Options& o) {
  Bundle bundle = Bundle::Open(o.bundle);
  const Manifest& m = bundle.manifest();
  const std::string device = DeviceFor(bundle, o);
  const double tolerance = ToleranceOf(m.precision == "fp32" ? device : m.precision);
  Admit(bundle);
  if (m.golden.empty()) {
    throw Refusal("bundle " + Clip(m.name) + " lists no golden data, so there is nothing to check; "
                  "rebuild the bundle with `python -m compile build`");
  }
  if (m.has_stream) return CheckStream(bundle, device, tolerance);

  struct Case {
    const GoldenPair* pair;
    Array input, expected;
  };
  std::vector<Case> cases;
  for (const GoldenPair& pair : m.golden) {
    Case c{&pair, ParseNpy(bundle.Verified(pair.input), "golden input " + pair.input),
           ParseNpy(bundle.Verified(pair.output), "golden output " + pair.output)};
    if (c.input.shape != m.input.shape) {
      throw Refusal("golden input " + pair.input + " does not match the manifest: " +
                    DescribeShapeMismatch(m, c.input.shape) + "; rebuild the bundle");
    }
    RequireFiniteInput(m, c.input, "golden input " + pair.input);
    cases.push_back(std::move(c));
  }

  const auto load_start = std::chrono::steady_clock::now();
  Model model(bundle.LibraryPath(), "model.so in " + bundle.dir(), device, RuntimeDir());
  const double load_ms = Millis(std::chrono::steady_clock::now() - load_start);
  std::printf("%s: %s runner, %s device, tolerance %g, load %.1f ms\n", Show(m.name).c_str(),
              kRunnerArch, device.c_str(), tolerance, load_ms);

  int passed = 0, beat_cases = 0, same_beats = 0;
  double worst = 0.0;
  for (const Case& c : cases) {
    const auto start = std::chrono::steady_clock::now();
    Array got = model.Run(c.input);
    const double run_ms = Millis(std::chrono::steady_clock::now() - start);
    Verdict v = Compare(got, c.expected, tolerance);
    if (v.passed) ++passed;
    if (!std::isnan(worst) && !(v.normalised <= worst)) worst = v.normalised;  // NaN sticks
    PrintCase(c.pair->name, v, tolerance, run_ms);
    // A detector's real records must also give PyTorch's beats (deploy/sweep.py).
    if (m.has_detect && c.pair->name.rfind("record-", 0) == 0) {
      ++beat_cases;
      if (SameBeats(got, c.expected, m.detect, m.input.shape[2])) ++same_beats;
    }
  }
  return Conclude(m, passed, cases.size(), worst, same_beats, beat_cases);
}

// The temporary output's name, for the signal handler: a fixed buffer, since a handler
// may only call async-signal-safe functions (unlink, raise).
char g_partial[4096];
volatile sig_atomic_t g_have_partial = 0;

extern "C" void RemovePartialAndDie(int sig) {
  if (g_have_partial) ::unlink(g_partial);
  ::raise(sig);  // SA_RESETHAND restored the default action: die of the same signal
}

// Holds SIGINT, SIGTERM and SIGHUP back while the temporary file and its name in
// g_partial change together.
class SignalsHeld {
 public:
  SignalsHeld() {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, sig);
    pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  ~SignalsHeld() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

 private:
  sigset_t old_;
};

// Writes to a sibling temporary file, created with O_EXCL | O_NOFOLLOW (a file or symlink
// planted under its name is refused, never written through) and removed on SIGINT,
// SIGTERM or SIGHUP, then renames it into place: a failed or interrupted run leaves no
// partial output behind. Opening it first proves the path writable before any time is
// spent on the model.
class OutputFile {
 public:
  explicit OutputFile(const std::string& path) : path_(path) {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) {
        throw Refusal("output path " + path + " is a folder; give a file name such as y.npy");
      }
      if (!S_ISREG(st.st_mode)) {  // a device or a pipe would be replaced by the rename
        throw Refusal("output path " + path +
                      " is not a regular file; give a file name such as y.npy");
      }
      if (::access(path.c_str(), W_OK) != 0) {
        throw Refusal("output path " + path + " is not writable (" + std::strerror(errno) +
                      "); choose another --output");
      }
    }
    temp_ = path + ".partial-" + std::to_string(::getpid());
    if (temp_.size() >= sizeof g_partial) throw Refusal("output path " + path + " is too long");
    struct sigaction action = {};
    action.sa_handler = RemovePartialAndDie;
    action.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &action, nullptr);
    SignalsHeld held;
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno == EEXIST) {
      throw Refusal("output path " + path + ": " + temp_ + " is in the way (left by another "
                    "run, or planted); remove it and run again");
    }
    if (fd_ < 0) {
      throw Refusal("output path " + path + " is not writable (" + std::strerror(errno) +
                    "); choose a writable folder for --output");
    }
    std::memcpy(g_partial, temp_.c_str(), temp_.size() + 1);
    g_have_partial = 1;
  }
  ~OutputFile() {
    SignalsHeld held;
    if (fd_ >= 0) ::close(fd_);
    if (!committed_ && g_have_partial) ::unlink(temp_.c_str());
    g_have_partial = 0;
  }

  void Commit(const std::string& header, const void* data, std::size_t size) {
    if (!WriteAll(header.data(), header.size()) || !WriteAll(data, size) || ::fsync(fd_) != 0) {
      throw Refusal("cannot write " + path_ + ": " + std::strerror(errno));
    }
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw Refusal("cannot write " + path_ + ": " + std::strerror(errno));
    SignalsHeld held;
    if (::rename(temp_.c_str(), path_.c_str()) != 0) {
      throw Refusal("cannot write " + path_ + ": " + std::strerror(errno));
    }
    committed_ = true;
    g_have_partial = 0;
  }

 private:
  bool WriteAll(const void* data, std::size_t size) {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      ssize_t n = ::write(fd_, p, size);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      p += n;
      size -= std::size_t(n);
    }
    return true;
  }

  std::string path_, temp_;
  int fd_ = -1;
  bool committed_ = false;
};

int RunOne(const Options& o) {
  Bundle bundle = Bundle::Open(o.bundle);
  const Manifest& m = bundle.manifest();
  const std::string device = DeviceFor(bundle, o);
  Admit(bundle);

  const std::string label = "input " + o.input;
  Array x = ReadNpy(o.input, label);
  if (x.shape != m.input.shape) {
    throw Refusal(label + " has the wrong shape for bundle " + Clip(m.name) + ": " +
                  DescribeShapeMismatch(m, x.shape));
  }
  RequireFiniteInput(m, x, label);
  OutputFile out(o.output);

  Model model(bundle.LibraryPath(), "model.so in " + bundle.dir(), device, RuntimeDir());
  const auto start = std::chrono::steady_clock::now();
  Array y = model.Run(x);
  const double run_ms = Millis(std::chrono::steady_clock::now() - start);
  out.Commit(NpyHeader(y.shape), y.data.data(), y.data.size() * sizeof(float));

  std::int64_t bad = 0;
  if (FirstNonFinite(y.data, &bad) >= 0) {
    std::fprintf(stderr, "warning: the output holds %lld NaN or Inf value(s)\n",
                 static_cast<long long>(bad));
  }
  std::printf("%s: wrote %s, shape %s float32, run_ms=%.1f\n", Show(m.name).c_str(),
              Show(o.output).c_str(),
              ShapeText(y.shape).c_str(), run_ms);
  return 0;
}

// Channel 0 of (channels, frames): a detector's logits.
std::vector<double> FirstRow(const Array& a) {
  const std::size_t frames = a.shape.size() == 2 ? std::size_t(a.shape[1]) : 0;
  return std::vector<double>(a.data.begin(), a.data.begin() + std::ptrdiff_t(frames));
}

// Streams one record (leads, samples) through the step: the frames (channels, frames).
Array StreamRecord(StreamRunner& runner, const Array& record) {
  const std::size_t leads = std::size_t(record.shape[0]), n = std::size_t(record.shape[1]);
  std::vector<float> interleaved(leads * n);
  for (std::size_t l = 0; l < leads; ++l) {
    for (std::size_t i = 0; i < n; ++i) interleaved[i * leads + l] = record.data[l * n + i];
  }
  std::vector<std::vector<float>> rows;
  auto emit = [&](const Array& frames, std::int64_t start, std::int64_t stop) {
    const std::size_t channels = std::size_t(frames.shape[1]), m = std::size_t(frames.shape[2]);
    rows.resize(channels);
    for (std::size_t c = 0; c < channels; ++c) {
      for (std::int64_t f = start; f < stop; ++f) rows[c].push_back(frames.data[c * m + std::size_t(f)]);
    }
  };
  runner.Push(interleaved.data(), n, emit);
  runner.Flush(emit);
  Array got;
  got.shape = {std::int64_t(rows.size()), rows.empty() ? 0 : std::int64_t(rows[0].size())};
  for (const auto& row : rows) got.data.insert(got.data.end(), row.begin(), row.end());
  return got;
}

// A stream bundle's golden case is a whole record (leads, samples) with the offline
// model's frames (channels, frames): streamed hop by hop, the step must give them (and,
// for a detector, the same beats).
int CheckStream(Bundle& bundle, const std::string& device, double tolerance) {
  const Manifest& m = bundle.manifest();
  const std::int64_t leads = std::int64_t(m.leads.size());
  struct Case {
    const GoldenPair* pair;
    Array input, expected;
  };
  std::vector<Case> cases;
  for (const GoldenPair& pair : m.golden) {
    Case c{&pair, ParseNpy(bundle.Verified(pair.input), "golden input " + pair.input),
           ParseNpy(bundle.Verified(pair.output), "golden output " + pair.output)};
    if (c.input.shape.size() != 2 || c.input.shape[0] != leads) {
      throw Refusal("golden input " + pair.input + " of a stream bundle has shape " +
                    ShapeText(c.input.shape) + ", expected (" + std::to_string(leads) +
                    ", samples); rebuild the bundle");
    }
    std::int64_t bad = 0;
    if (FirstNonFinite(c.input.data, &bad) >= 0) {
      throw Refusal("golden input " + pair.input + " holds NaN or Inf; rebuild the bundle");
    }
    cases.push_back(std::move(c));
  }
  const auto load_start = std::chrono::steady_clock::now();
  Model model(bundle.LibraryPath(), "model.so in " + bundle.dir(), device, RuntimeDir());
  StreamRunner runner(model, m.stream, leads);
  std::printf("%s: %s runner, %s device, tolerance %g, load %.1f ms, stream hop %lld\n",
              Show(m.name).c_str(), kRunnerArch, device.c_str(), tolerance,
              Millis(std::chrono::steady_clock::now() - load_start),
              static_cast<long long>(m.stream.hop));
  int passed = 0, same_beats = 0;
  double worst = 0.0;
  for (const Case& c : cases) {
    const auto start = std::chrono::steady_clock::now();
    Array got = StreamRecord(runner, c.input);
    const double run_ms = Millis(std::chrono::steady_clock::now() - start);
    Verdict v = Compare(got, c.expected, tolerance);
    if (v.passed) ++passed;
    if (!std::isnan(worst) && !(v.normalised <= worst)) worst = v.normalised;
    PrintCase(c.pair->name, v, tolerance, run_ms);
    std::int64_t bad = 0;
    if (m.has_detect && got.shape == c.expected.shape && FirstNonFinite(got.data, &bad) < 0 &&
        DetectRpeaks(FirstRow(got), m.detect, c.input.shape[1]) ==
            DetectRpeaks(FirstRow(c.expected), m.detect, c.input.shape[1])) {
      ++same_beats;
    }
  }
  const int beat_cases = m.has_detect ? int(cases.size()) : 0;
  return Conclude(m, passed, cases.size(), worst, same_beats, beat_cases);
}

void RequireDetector(const Manifest& m) {
  if (!m.detect_error.empty()) throw Refusal(m.detect_error);
  if (!m.has_detect) {
    throw Refusal("bundle " + Clip(m.name) + " is not an R-peak detector (its manifest has "
                  "\"detect\": null); --detect needs a QRS detector bundle (preset cpsc2019_qrs)");
  }
}

// The shortest decimal that reads back as the same double, as Python's json prints it.
std::string JsonNumber(double v) {
  char text[64];
  const bool plain = std::fabs(v) >= 1e-4 && std::fabs(v) < 1e16;  // Python's repr's range
  for (int digits = plain ? 0 : 1; digits <= (plain ? 24 : 17); ++digits) {
    std::snprintf(text, sizeof text, plain ? "%.*f" : "%.*g", digits, v);
    if (std::strtod(text, nullptr) == v) break;
  }
  std::string out = text;
  if (out.find_first_of(".e") == std::string::npos) out += ".0";
  return out;
}

void PrintDetection(const std::vector<std::int64_t>& beats, const DetectRule& rule,
                    std::int64_t samples, bool json) {
  double bpm = 0.0;
  const bool rated = HeartRate(beats, rule.fs, &bpm);
  std::string list;
  for (std::size_t i = 0; i < beats.size(); ++i) {
    list += (json && i ? ", " : " ") + std::to_string(beats[i]);
  }
  if (json) {
    std::printf("{\"beats\": [%s], \"heart_rate_bpm\": %s, \"fs\": %lld, \"samples\": %lld, "
                "\"seconds\": %s}\n", list.empty() ? "" : list.substr(1).c_str(),
                rated ? JsonNumber(bpm).c_str() : "null", static_cast<long long>(rule.fs),
                static_cast<long long>(samples), JsonNumber(double(samples) / rule.fs).c_str());
    return;
  }
  std::printf("beats: %zu%s\n", beats.size(), list.c_str());
  if (rated) {
    std::printf("heart_rate: %.1f bpm\n", bpm);
  } else {
    std::printf("heart_rate: n/a\n");
  }
}

// One record through a window detector bundle, then the manifest's R-peak rule.
int Detect(const Options& o) {
  Bundle bundle = Bundle::Open(o.bundle);
  const Manifest& m = bundle.manifest();
  RequireDetector(m);
  if (m.has_stream) {
    throw Refusal("bundle " + Clip(m.name) + " is a stream bundle; stream the record as raw "
                  "float32 samples with --stream --detect --input FILE");
  }
  const std::string device = DeviceFor(bundle, o);
  Admit(bundle);
  const std::string label = "input " + o.input;
  Array x = ReadNpy(o.input, label);
  const std::int64_t leads = m.input.shape[1], samples = m.input.shape[2];
  const bool fits = m.input.shape[0] == 1 &&
                    (x.shape == m.input.shape || x.shape == std::vector<std::int64_t>{leads, samples} ||
                     (leads == 1 && x.shape == std::vector<std::int64_t>{samples}));
  if (!fits) {
    throw Refusal(label + " has the wrong shape for bundle " + Clip(m.name) + ": " +
                  DescribeShapeMismatch(m, x.shape));
  }
  x.shape = m.input.shape;
  RequireFiniteInput(m, x, label);
  Model model(bundle.LibraryPath(), "model.so in " + bundle.dir(), device, RuntimeDir());
  Array y = model.Run(x);
  std::int64_t bad = 0;
  if (FirstNonFinite(y.data, &bad) >= 0) {
    throw Refusal("the model's output holds NaN or Inf, so no beats can be found; check the "
                  "bundle with --check");
  }
  const std::int64_t frames = std::int64_t(y.data.size()), r = m.detect.reduction;
  if (frames != samples / r && frames != (samples + r - 1) / r) {
    throw Refusal("the model gives " + std::to_string(frames) + " frames for " +
                  std::to_string(samples) + " samples, which does not fit the rule's reduction " +
                  std::to_string(r) + "; rebuild the bundle");
  }
  PrintDetection(DetectRpeaks(WindowLogits(y, 0), m.detect, samples), m.detect, samples, o.json);
  return 0;
}

// Raw samples from a file or stdin through a stream bundle: frames, or beats with
// --detect, printed as the stream completes them; memory is bounded (one hop of samples,
// a few seconds of logits) whatever the stream's length.
int Stream(const Options& o) {
  Bundle bundle = Bundle::Open(o.bundle);
  const Manifest& m = bundle.manifest();
  if (!m.stream_error.empty()) throw Refusal(m.stream_error);
  if (!m.has_stream) {
    throw Refusal("bundle " + Clip(m.name) + " is a window bundle (\"stream\": null); --stream "
                  "needs a stream bundle: python -m compile build --hop 512");
  }
  if (o.detect) RequireDetector(m);
  const std::string device = DeviceFor(bundle, o);
  Admit(bundle);
  const std::int64_t leads = std::int64_t(m.leads.size());
  RawSource source(o.input, leads, m.stream.hop);
  Model model(bundle.LibraryPath(), "model.so in " + bundle.dir(), device, RuntimeDir());
  StreamRunner runner(model, m.stream, leads);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each line as soon as it is known

  BeatStream beats(m.detect);
  std::vector<double> logits;
  std::int64_t index = 0;
  auto emit = [&](const Array& frames, std::int64_t start, std::int64_t stop) {
    const std::size_t channels = std::size_t(frames.shape[1]), n = std::size_t(frames.shape[2]);
    for (std::int64_t f = start; f < stop; ++f) {
      if (o.detect) {
        const float v = frames.data[std::size_t(f)];
        if (!std::isfinite(v)) {
          throw Refusal("the model's output holds NaN or Inf, so no beats can be found; "
                        "check the bundle with --check");
        }
        logits.push_back(v);
        continue;
      }
      std::printf("frame %lld", static_cast<long long>(index++));
      for (std::size_t c = 0; c < channels; ++c) std::printf(" %.6g", frames.data[c * n + std::size_t(f)]);
      std::printf("\n");
    }
  };
  auto report = [&](const std::vector<std::int64_t>& found) {
    for (std::int64_t s : found) {
      std::printf("beat %lld %.3f\n", static_cast<long long>(s), double(s) / m.fs);
    }
  };
  auto drain = [&]() {
    if (o.detect) report(beats.Push(logits));
    logits.clear();
  };
  for (;;) {
    const std::vector<float>& xs = source.Next();
    if (xs.empty()) break;
    runner.Push(xs.data(), xs.size() / std::size_t(leads), emit);
    drain();
  }
  runner.Flush(emit);
  drain();
  if (o.detect) report(beats.Flush());
  std::fflush(stdout);
  if (source.leftover() != 0) {
    throw Refusal(source.label() + ": the stream ended " + std::to_string(source.leftover()) +
                  " byte(s) into a sample (" + std::to_string(4 * leads) + " bytes: " +
                  std::to_string(leads) + " lead(s) of float32); the samples before it were "
                  "streamed and their output written");
  }
  return 0;
}

int Info(const Options& o) {
  Bundle bundle = Bundle::Open(o.bundle);
  const Manifest& m = bundle.manifest();
  std::string leads;
  for (std::size_t i = 0; i < m.leads.size(); ++i) leads += (i ? ", " : "") + m.leads[i];
  std::string golden;
  for (std::size_t i = 0; i < m.golden.size(); ++i) golden += (i ? ", " : "") + m.golden[i].name;
  std::printf("name: %s\n", Show(m.name).c_str());
  std::printf("target: %s (arch %s, device %s)\n", Show(m.target_name).c_str(), m.arch.c_str(),
              m.device.c_str());
  std::printf("precision: %s\n", m.precision.c_str());
  std::printf("leads: %zu [%s]\n", m.leads.size(), Show(leads).c_str());
  std::printf("fs: %g Hz\n", m.fs);
  std::printf("input: %s float32 %s (batch, leads, samples)\n", Show(m.input.name).c_str(),
              ShapeText(m.input.shape).c_str());
  std::printf("output: %s float32 %s\n", Show(m.output.name).c_str(),
              ShapeText(m.output.shape).c_str());
  std::printf("golden: %s\n", golden.empty() ? "(none)" : Show(golden).c_str());
  std::printf("runner: %s, %s\n", kRunnerArch,
              m.arch == kRunnerArch ? "can run this bundle"
                                    : ("needs the " + m.arch + " build of mscnn-run").c_str());
  return 0;
}

int Main(int argc, char** argv) {
  Options o = ParseArgs(argc, argv);
  if (o.mode == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (o.mode == "version") {
    std::printf("mscnn-run %s (%s)\n", kVersion, kRunnerArch);
    return 0;
  }
  if (o.mode == "tolerances") {
    for (const Tolerance& t : kTolerances) std::printf("%s %g\n", t.device, t.normalised);
    return 0;
  }
  if (o.mode == "info") return Info(o);
  if (o.mode == "check") return Check(o);
  if (o.mode == "detect") return Detect(o);
  if (o.mode == "stream") return Stream(o);
  return RunOne(o);
}

}  // namespace
}  // namespace mscnn

int main(int argc, char** argv) {
  try {
    return mscnn::Main(argc, argv);
  } catch (const mscnn::Refusal& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());  // already escaped
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: out of memory; the input is too large for this device\n");
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: unexpected failure: %s\n", mscnn::Printable(e.what()).c_str());
  } catch (...) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: unexpected failure of an unknown kind\n");
  }
  return 2;
}
