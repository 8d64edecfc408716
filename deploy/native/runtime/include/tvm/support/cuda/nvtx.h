// NVTX profiling ranges are a CUDA tool; the armv7 runtime has no CUDA, so they are empty.
#ifndef MSCNN_NATIVE_TVM_SUPPORT_CUDA_NVTX_H_
#define MSCNN_NATIVE_TVM_SUPPORT_CUDA_NVTX_H_

#include <string>

namespace tvm {
namespace support {

class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char*) {}
  explicit NVTXScopedRange(const std::string&) {}
  NVTXScopedRange(const NVTXScopedRange&) = delete;
  NVTXScopedRange& operator=(const NVTXScopedRange&) = delete;
};

}  // namespace support
}  // namespace tvm

#endif  // MSCNN_NATIVE_TVM_SUPPORT_CUDA_NVTX_H_
