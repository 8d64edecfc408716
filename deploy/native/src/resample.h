// A record at any sampling rate to the bundle's: deploy/resample.py's polyphase resampler
// in C++, streaming. The same rate pair reduction (L/M), the same Kaiser-windowed sinc
// (2 * 10 * max(L, M) + 1 taps, beta 5, DC gain L, centred), the same zeros before and
// after the record; each output is one phase's dot product with the latest inputs,
// accumulated in double as numpy does, so any chunking gives the offline samples bit for
// bit and the Python resampler's within the rounding of the last float32 bit.
#ifndef MSCNN_RUN_RESAMPLE_H_
#define MSCNN_RUN_RESAMPLE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mscnn {

// Input and output rates (whole Hz) as the reduced ratio up / down.
struct RatePair {
  std::int64_t fs_in = 0, fs_out = 0, up = 1, down = 1;
  // ceil(n * up / down): the samples that n inputs give.
  std::int64_t OutputLength(std::int64_t n) const;
  // An output sample index as the nearest input sample index (round half up).
  std::int64_t ToInputClock(std::int64_t s) const;
};

// Whole Hz as given on the command line ("360"); a Refusal naming `flag` for anything
// else (a fraction, zero, a sign, text).
std::int64_t ParseRate(const std::string& text, const std::string& flag);
// The checked pair; a Refusal for a ratio whose filter would be huge (up or down above
// 1000, e.g. 499 -> 500 Hz), as deploy/resample.py's rate_pair refuses it.
RatePair MakeRatePair(std::int64_t fs_in, std::int64_t fs_out);
// The low-pass FIR at the upsampled rate (deploy/resample.py's design_filter).
std::vector<double> DesignFilter(const RatePair& pair);

// Streaming resampling of interleaved samples (leads per sample). Output k is final once
// input (k * down + centre) / up has arrived; the inputs the next output reaches back to
// are kept (taps per phase of them, a few dozen), whatever the stream's length.
class Resampler {
 public:
  Resampler(const RatePair& pair, std::int64_t leads);
  // `count` new samples (count * leads floats, interleaved); appends the outputs now
  // final to `out`, interleaved.
  void Push(const float* interleaved, std::size_t count, std::vector<float>* out);
  // The end of the record (zeros after it): appends the remaining outputs, up to
  // OutputLength(received) in all.
  void Flush(std::vector<float>* out);
  const RatePair& pair() const { return pair_; }
  std::int64_t leads() const { return leads_; }
  std::int64_t received() const { return received_; }

 private:
  void Emit(std::int64_t end, std::vector<float>* out);

  RatePair pair_;
  std::int64_t leads_;
  std::int64_t centre_ = 0;
  std::int64_t taps_ = 0;               // taps per phase
  std::vector<double> phases_;          // (up, taps): phase p holds h[p], h[p + up], ...
  std::vector<double> buf_;             // (inputs kept, leads), zeros before sample 0
  std::int64_t start_ = 0;              // input index of buf_'s first row
  std::int64_t received_ = 0;
  std::int64_t next_ = 0;               // next output index
};

}  // namespace mscnn

#endif  // MSCNN_RUN_RESAMPLE_H_
