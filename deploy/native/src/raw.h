// Raw samples for --stream: little-endian float32 in mV, leads interleaved, from a file or
// stdin, checked as they are read. Apart from the step that consumes them (stream.h), so
// the fuzz harness can run this reader without the TVM runtime.
#ifndef MSCNN_RUN_RAW_H_
#define MSCNN_RUN_RAW_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mscnn {

// |x| in mV above which a raw sample is not an ECG but a sign of the wrong format, byte
// order or scale: the Python runner's limit too.
constexpr double kMaxAbsMillivolts = 1e4;

// Reads raw little-endian float32 samples, leads interleaved, from a file or "-" (stdin)
// in pieces of about one hop. Refused, with a Refusal that says what was found and what
// to do: a stream that starts with a .npy header, a zip archive (.npz) or a line of text
// (CSV, WFDB header), before any sample is taken from it; an Inf sample, or one beyond
// kMaxAbsMillivolts, naming it (sample index, lead, value) before any of its piece is
// streamed. NaN passes: it marks a gap (the sensor gave nothing), which the stream reads
// as one (streaming.h).
class RawSource {
 public:
  RawSource(const std::string& path, std::int64_t leads, std::int64_t hop);
  ~RawSource();
  RawSource(const RawSource&) = delete;
  RawSource& operator=(const RawSource&) = delete;

  // Reads as much of the stream as it takes to tell (a few hundred bytes at most) and
  // refuses one that is not raw samples; Next() does it first if it was not called.
  void CheckStart();
  // The next whole samples (interleaved), empty at the end of the stream.
  const std::vector<float>& Next();
  // Bytes after the last whole sample at the end of the stream (0: it ended cleanly).
  std::size_t leftover() const { return rest_.size(); }
  // Whole samples (per lead) returned so far.
  std::int64_t samples() const { return seen_; }
  std::string label() const { return label_; }

 private:
  void Read();  // one read(2) onto rest_; at the end of the stream, sets ended_

  std::string label_;
  int fd_ = -1;
  bool owned_ = false;
  bool started_ = false;  // CheckStart passed
  bool ended_ = false;    // read(2) returned 0
  std::int64_t leads_;
  std::vector<char> buffer_, rest_;
  std::vector<float> samples_;
  std::int64_t seen_ = 0;  // whole samples read so far
};

}  // namespace mscnn

#endif  // MSCNN_RUN_RAW_H_
