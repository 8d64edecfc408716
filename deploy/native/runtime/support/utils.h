// String helpers the TVM runtime sources include as "../support/utils.h" (armv7 build).
#ifndef MSCNN_NATIVE_TVM_SUPPORT_UTILS_H_
#define MSCNN_NATIVE_TVM_SUPPORT_UTILS_H_

#include <string>

namespace tvm {
namespace support {

// True for a non-empty run of decimal digits: how TVM_BIND_THREADS lists CPU ids.
inline bool IsNumber(const std::string& text) {
  if (text.empty()) return false;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace support
}  // namespace tvm

#endif  // MSCNN_NATIVE_TVM_SUPPORT_UTILS_H_
