// NumPy .npy files, float32 only: the bundle's golden data and the runner's input/output.
#ifndef MSCNN_RUN_NPY_H_
#define MSCNN_RUN_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

namespace mscnn {

struct Array {
  std::vector<std::int64_t> shape;
  std::vector<float> data;  // C order
};

// "(1, 12, 5000)", as NumPy prints shapes, so messages read the same on both sides.
std::string ShapeText(const std::vector<std::int64_t>& shape);

// A little-endian float32, C-ordered, non-empty array from a user's file: a regular file
// (checked on the descriptor), its header capped, and the data size its shape implies
// checked against the file size before any data is read. Anything else is a Refusal
// that names `label` and says what was found and what to do about it.
Array ReadNpy(const std::string& path, const std::string& label);

// The same from bytes already in memory: the golden files, read once while hashed.
Array ParseNpy(const std::string& bytes, const std::string& label);

// The complete .npy v1.0 header (magic, version, length, padded dict) for a '<f4' array.
std::string NpyHeader(const std::vector<std::int64_t>& shape);

// Index of the first NaN or Inf, or -1; also counts them all.
std::int64_t FirstNonFinite(const std::vector<float>& data, std::int64_t* count);

}  // namespace mscnn

#endif  // MSCNN_RUN_NPY_H_
