// mscnn-run: manifest.json as typed values, checked once: types, ranges, enums, paths.
#ifndef MSCNN_RUN_MANIFEST_H_
#define MSCNN_RUN_MANIFEST_H_

#include <cstdint>
#include <string>
#include <vector>

namespace mscnn {

struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> shape;
  std::string dtype;
};

struct GoldenPair {
  std::string name;
  std::string input;  // relative to the bundle folder
  std::string output;
};

struct ListedFile {
  std::string path;  // relative to the bundle folder
  std::string sha256;
  std::uint64_t bytes = 0;
};

// The R-peak rule of a QRS detector (deploy/rpeaks.py RPeakRule), manifest key "detect".
struct DetectRule {
  double threshold = 0.5;  // probability a frame must exceed, in (0, 1)
  std::int64_t min_rr_ms = 200;
  std::int64_t edge_ms = 50;
  std::int64_t reduction = 8;  // input samples per output frame
  std::int64_t fs = 500;
};

// One state tensor of a stream bundle's step: float32 or int64.
struct StateSpec {
  std::string name;
  std::vector<std::int64_t> shape;
  std::string dtype;  // float32, int64, or an int8 step's int16, int8, uint8
};

// Bytes per element of a state dtype; 0 for one a stream bundle never has.
std::int64_t StateElementBytes(const std::string& dtype);

// A stream bundle's step (deploy/stream.py), manifest key "stream".
struct StreamSpec {
  std::int64_t hop = 0, reduction = 0, channels = 0, delay_frames = 0, look_ahead = 0,
               flush_steps = 0, state_bytes = 0;
  std::vector<StateSpec> states;
};

// The keys mscnn-run uses; any other key (newer optional fields) is ignored.
struct Manifest {
  std::string name;
  std::string preset;  // "model.preset" where it is a string, else empty: for messages only
  std::string target_name;
  std::string arch;    // "x86_64", "aarch64" or "armv7"
  std::string device;  // "cpu" or "cuda"
  std::string precision = "fp32";  // "fp32", "int8" or "fp16": the tolerance row if not fp32
  std::vector<std::string> leads;
  double fs = 0.0;
  TensorSpec input;
  TensorSpec output;
  std::vector<GoldenPair> golden;
  std::vector<ListedFile> files;
  // "detect" and "stream" are read when they are objects of the form this runner knows;
  // another form (a newer build's) is no error until a mode needs it: then the error
  // kept here is the refusal.
  bool has_detect = false;  // an R-peak detector with this rule
  DetectRule detect;
  std::string detect_error;
  bool has_stream = false;  // a stream bundle with this step
  StreamSpec stream;
  std::string stream_error;
};

// Parses and checks the text of a manifest (schema_version 2; a version-1 bundle is
// refused: rebuild it): every key mscnn-run uses
// is present with its type, integers are integers in range, shapes are positive with a
// product that fits, enums are known values, listed paths are plain relative paths. A
// Refusal names `where` and the dotted key at fault.
Manifest ParseManifest(const std::string& text, const std::string& where);

}  // namespace mscnn

#endif  // MSCNN_RUN_MANIFEST_H_
