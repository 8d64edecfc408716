#include "check.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "bundle.h"
#include "detection.h"
#include "model.h"
#include "npy.h"
#include "refusal.h"
#include "rpeaks.h"
#include "runner.h"
#include "signature.h"
#include "stream.h"
#include "text.h"

namespace mscnn {
namespace {

// Must match deploy/parity.py TOLERANCES, which a test compares with `--tolerances`: a
// row per device kind for fp32 bundles, per precision for the others.
struct Tolerance {
  const char* device;
  double normalised;
};
constexpr Tolerance kTolerances[] = {
    {"cpu", 1e-5}, {"cuda", 1e-4}, {"int8", 0.0}, {"fp16", 2e-2}};

double ToleranceOf(const std::string& device) {
  for (const Tolerance& t : kTolerances) {
    if (device == t.device) return t.normalised;
  }
  throw Refusal("no tolerance for device " + device);
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
// `listed`: how many golden cases the bundle holds (more than `cases` under --cases).
int Conclude(const Manifest& m, int passed, std::size_t cases, std::size_t listed, double worst,
             int same_beats, int beat_cases) {
  const bool beats_gate = m.precision != "fp16";
  const bool ok = passed == int(cases) && (same_beats == beat_cases || !beats_gate);
  const std::string part = cases < listed ? " (the first " + std::to_string(cases) + " of " +
                                                std::to_string(listed) + " golden cases)"
                                          : "";
  std::printf("check: %s %d/%zu worst_normalised=%.3g%s%s%s\n", ok ? "pass" : "FAIL", passed,
              cases, worst, BeatsText(m, same_beats, beat_cases).c_str(),
              beats_gate || !m.has_detect ? "" : " (reported, not judged: fp16)", part.c_str());
  std::fflush(stdout);
  return ok ? 0 : 1;
}

void PrintCase(const std::string& name, const Verdict& v, double tolerance, double run_ms) {
  std::printf("%s: %s max_abs=%.3g normalised=%.3g tolerance=%g run_ms=%.1f%s%s%s\n",
              Show(name).c_str(), v.passed ? "pass" : "FAIL", v.max_abs, v.normalised,
              tolerance, run_ms, v.detail.empty() ? "" : " (", v.detail.c_str(),
              v.detail.empty() ? "" : ")");
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
int CheckStream(Bundle& bundle, const std::string& device, double tolerance, std::int64_t limit) {
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
  const std::size_t listed = cases.size();
  if (limit > 0 && std::size_t(limit) < listed) cases.resize(std::size_t(limit));
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
  return Conclude(m, passed, cases.size(), listed, worst, same_beats, beat_cases);
}

}  // namespace

int Check(const Options& o) {
  Bundle bundle = Bundle::Open(o.bundle, TrustedKey(o));
  const Manifest& m = bundle.manifest();
  const std::string device = DeviceFor(bundle, o);
  const double tolerance = ToleranceOf(m.precision == "fp32" ? device : m.precision);
  Admit(bundle);
  if (m.golden.empty()) {
    throw Refusal("bundle " + Clip(m.name) + " lists no golden data, so there is nothing to check; "
                  "rebuild the bundle with `python -m compile build`");
  }
  if (m.has_stream) return CheckStream(bundle, device, tolerance, o.cases);
  const std::int64_t limit = o.cases;

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

  const std::size_t listed = cases.size();
  if (limit > 0 && std::size_t(limit) < listed) cases.resize(std::size_t(limit));
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
  return Conclude(m, passed, cases.size(), listed, worst, same_beats, beat_cases);
}

int Tolerances(const Options&) {
  for (const Tolerance& t : kTolerances) std::printf("%s %g\n", t.device, t.normalised);
  return 0;
}

}  // namespace mscnn
