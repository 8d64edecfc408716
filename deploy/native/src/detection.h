// What a QRS detector bundle's output becomes for its user: the logits of a record, and
// its beats and heart rate as printed (text, or the JSON of `python -m deploy detect`).
#ifndef MSCNN_RUN_DETECTION_H_
#define MSCNN_RUN_DETECTION_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "manifest.h"
#include "npy.h"

namespace mscnn {

// The shortest decimal that reads back as the same double, as Python's json prints it.
std::string JsonNumber(double v);

// A Refusal unless the bundle is an R-peak detector of a form this runner knows.
void RequireDetector(const Manifest& m);

// The logits of record `b` of a window detector's output (batch, frames, 1), in double.
std::vector<double> WindowLogits(const Array& y, std::size_t b);

// A run of samples the sensor did not give (NaN in a stream), in the record's clock.
struct GapRun {
  std::int64_t start, samples;
};

// `beats: N s1 s2 ...` and `heart_rate: X bpm` lines, or with `json` one JSON object
// (beats, heart_rate_bpm, fs, samples, seconds, gaps) for a record of `samples` samples.
// No RR interval across a gap counts towards the heart rate.
void PrintDetection(const std::vector<std::int64_t>& beats, const DetectRule& rule,
                    std::int64_t samples, bool json, const std::vector<GapRun>* gaps = nullptr);

}  // namespace mscnn

#endif  // MSCNN_RUN_DETECTION_H_
