// A stream bundle's step driven as deploy/stream.py's Stream drives it: samples in, hop
// by hop, frames out as each step completes them; then the end-of-record flush.
#ifndef MSCNN_RUN_STREAM_H_
#define MSCNN_RUN_STREAM_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "manifest.h"
#include "model.h"
#include "npy.h"

namespace mscnn {

class StreamRunner {
 public:
  // Called with each step's frames (1, channels, n) and the range [start, stop) of
  // them that are the next frames of the offline model.
  using Emit = std::function<void(const Array& frames, std::int64_t start, std::int64_t stop)>;

  StreamRunner(Model& model, const StreamSpec& spec, std::int64_t leads);

  // `count` whole samples, leads interleaved (sample-major), all finite: runs a step for
  // every hop they complete. Memory: one hop, whatever the stream's length.
  void Push(const float* interleaved, std::size_t count, const Emit& emit);
  // The end of the record: the last partial hop with n_valid = samples in it, then empty
  // hops until a step returns fewer valid frames than a hop holds (at most flush_steps).
  // Starts a fresh record afterwards.
  void Flush(const Emit& emit);
  // A gap of `n` samples in the record (the sensor gave none): the segment before it ends
  // as Flush ends a record, the state restarts, and the next segment begins `n` samples
  // after the last one's end in the record's clock (start()).
  void Gap(std::int64_t n, const Emit& emit);
  // Samples of the current segment pushed so far.
  std::int64_t samples() const { return samples_; }
  // The record's sample where the current segment began.
  std::int64_t start() const { return start_; }

 private:
  void Reset();

  Model& model_;
  StreamSpec spec_;
  std::int64_t leads_;
  Array hop_;  // (1, leads, hop), planar
  std::int64_t fill_ = 0;
  std::int64_t samples_ = 0;
  std::int64_t start_ = 0;
  void EndSegment(const Emit& emit);
};

}  // namespace mscnn

#endif  // MSCNN_RUN_STREAM_H_
