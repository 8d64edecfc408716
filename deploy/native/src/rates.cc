#include "rates.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "detection.h"
#include "refusal.h"
#include "rpeaks.h"

namespace mscnn {

InputRate::InputRate(std::int64_t fs, const Manifest& m) : fs_(fs ? fs : std::int64_t(m.fs)) {
  if (fs == 0 || double(fs) == m.fs) return;
  if (m.fs != double(std::int64_t(m.fs)) || m.fs < 1) {
    throw Refusal("--fs " + std::to_string(fs) + ": the bundle's rate is not a whole number "
                  "of Hz, so the record cannot be resampled to it; give a record at its rate");
  }
  resampler_ = std::make_unique<Resampler>(MakeRatePair(fs, std::int64_t(m.fs)),
                                           std::int64_t(m.leads.size()));
}

void InputRate::Note() {
  if (noted_) return;
  noted_ = true;
  std::fprintf(stderr, "note: resampled from %lld Hz (the record's) to %lld Hz (the bundle's); "
               "beats are in the record's samples\n", static_cast<long long>(fs_),
               static_cast<long long>(resampler_->pair().fs_out));
}

const std::vector<float>& InputRate::Push(const std::vector<float>& xs) {
  if (!resampler_) return xs;
  Note();
  out_.clear();
  resampler_->Push(xs.data(), xs.size() / std::size_t(resampler_->leads()), &out_);
  return out_;
}

const std::vector<float>& InputRate::Flush() {
  out_.clear();
  if (resampler_) resampler_->Flush(&out_);
  return out_;
}

Array InputRate::ResampleWindow(const Array& x, std::int64_t window, const std::string& label,
                                std::int64_t* samples) {
  const std::int64_t leads = resampler_->leads();
  const std::vector<std::int64_t>& s = x.shape;
  const bool record = (s.size() == 1 && leads == 1) || (s.size() == 2 && s[0] == leads) ||
                      (s.size() == 3 && s[0] == 1 && s[1] == leads);
  if (!record) {
    throw Refusal(label + " has shape " + ShapeText(s) + ": expected a record of " +
                  std::to_string(leads) + " lead(s), (leads, samples)" +
                  (leads == 1 ? " or (samples,)" : ""));
  }
  const std::int64_t n = s.back();
  std::int64_t bad = 0;
  const std::int64_t first = FirstNonFinite(x.data, &bad);
  if (first >= 0) {
    throw Refusal(label + " holds " + std::to_string(bad) + " NaN or Inf value(s), the first "
                  "at sample " + std::to_string(first % n) + " (lead " + std::to_string(first / n) +
                  "); the model needs finite samples: fill gaps (interpolate or zero) first");
  }
  const RatePair& pair = resampler_->pair();
  if (pair.OutputLength(n) != window) {
    std::int64_t want = window * pair.down / pair.up;
    while (pair.OutputLength(want) < window) ++want;
    throw Refusal(label + " is " + std::to_string(n) + " samples at " + std::to_string(fs_) +
                  " Hz, which resample to " + std::to_string(pair.OutputLength(n)) + "; this "
                  "window bundle takes " + std::to_string(window) + " samples at " +
                  std::to_string(pair.fs_out) + " Hz: give " + std::to_string(want) +
                  " samples at " + std::to_string(fs_) + " Hz, or stream a longer record "
                  "through the model's stream bundle with --stream --fs");
  }
  std::vector<float> interleaved(x.data.size());
  for (std::int64_t lead = 0; lead < leads; ++lead) {
    for (std::int64_t i = 0; i < n; ++i) interleaved[std::size_t(i * leads + lead)] = x.data[std::size_t(lead * n + i)];
  }
  std::vector<float> y;
  resampler_->Push(interleaved.data(), std::size_t(n), &y);
  resampler_->Flush(&y);
  Array out;
  out.shape = {leads, window};
  out.data.resize(y.size());
  for (std::int64_t lead = 0; lead < leads; ++lead) {
    for (std::int64_t i = 0; i < window; ++i) out.data[std::size_t(lead * window + i)] = y[std::size_t(i * leads + lead)];
  }
  *samples = n;
  Note();
  return out;
}

std::int64_t InputRate::ToRecord(std::int64_t beat, std::int64_t received) const {
  if (!resampler_) return beat;
  return std::min(resampler_->pair().ToInputClock(beat), received - 1);
}

void InputRate::PrintDetection(const std::vector<std::int64_t>& beats, const DetectRule& rule,
                               std::int64_t samples, bool json) const {
  if (!resampler_) return mscnn::PrintDetection(beats, rule, samples, json);
  double bpm = 0.0;
  const bool rated = HeartRate(beats, rule.fs, &bpm);  // as found, at the bundle's rate
  std::string list;
  for (std::size_t i = 0; i < beats.size(); ++i) {
    list += (json && i ? ", " : " ") + std::to_string(ToRecord(beats[i], samples));
  }
  if (!json) {
    std::printf("beats: %zu%s\n", beats.size(), list.c_str());
    std::printf(rated ? "heart_rate: %.1f bpm\n" : "heart_rate: n/a\n", bpm);
    return;
  }
  std::printf("{\"beats\": [%s], \"heart_rate_bpm\": %s, \"fs\": %lld, \"fs_input\": %lld, "
              "\"samples\": %lld, \"seconds\": %s, \"gaps\": []}\n", list.empty() ? "" : list.substr(1).c_str(),
              rated ? JsonNumber(bpm).c_str() : "null", static_cast<long long>(rule.fs),
              static_cast<long long>(fs_), static_cast<long long>(samples),
              JsonNumber(double(samples) / double(fs_)).c_str());
}

}  // namespace mscnn
