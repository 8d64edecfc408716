#include "detection.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "refusal.h"
#include "rpeaks.h"
#include "text.h"

namespace mscnn {

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

void RequireDetector(const Manifest& m) {
  if (!m.detect_error.empty()) throw Refusal(m.detect_error);
  if (!m.has_detect) {
    throw Refusal("bundle " + Clip(m.name) + " is not an R-peak detector (its manifest has "
                  "\"detect\": null); --detect needs a QRS detector bundle (preset cpsc2019_qrs)");
  }
}

std::vector<double> WindowLogits(const Array& y, std::size_t b) {
  const std::size_t batch = y.shape.empty() ? 1 : std::size_t(y.shape[0]);
  const std::size_t frames = y.data.size() / batch;
  return std::vector<double>(y.data.begin() + std::ptrdiff_t(b * frames),
                             y.data.begin() + std::ptrdiff_t((b + 1) * frames));
}

void PrintDetection(const std::vector<std::int64_t>& beats, const DetectRule& rule,
                    std::int64_t samples, bool json, const std::vector<GapRun>* gaps) {
  std::vector<std::int64_t> breaks;
  std::string listed;  // the gaps as JSON objects, as deploy/records.py Gap.to_json
  for (const GapRun& g : gaps ? *gaps : std::vector<GapRun>{}) {
    breaks.push_back(g.start);
    listed += std::string(listed.empty() ? "" : ", ") + "{\"start\": " + std::to_string(g.start) +
              ", \"samples\": " + std::to_string(g.samples) +
              ", \"seconds\": " + JsonNumber(double(g.samples) / double(rule.fs)) + "}";
  }
  double bpm = 0.0;
  const bool rated = HeartRate(beats, rule.fs, &bpm, breaks);
  std::string list;
  for (std::size_t i = 0; i < beats.size(); ++i) {
    list += (json && i ? ", " : " ") + std::to_string(beats[i]);
  }
  if (json) {
    std::printf("{\"beats\": [%s], \"heart_rate_bpm\": %s, \"fs\": %lld, \"samples\": %lld, "
                "\"seconds\": %s, \"gaps\": [%s]}\n", list.empty() ? "" : list.substr(1).c_str(),
                rated ? JsonNumber(bpm).c_str() : "null", static_cast<long long>(rule.fs),
                static_cast<long long>(samples), JsonNumber(double(samples) / rule.fs).c_str(),
                listed.c_str());
    return;
  }
  std::printf("beats: %zu%s\n", beats.size(), list.c_str());
  if (rated) {
    std::printf("heart_rate: %.1f bpm\n", bpm);
  } else {
    std::printf("heart_rate: n/a\n");
  }
}

}  // namespace mscnn
