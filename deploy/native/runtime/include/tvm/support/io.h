// Binary stream interface for the armv7 TVM runtime build.
//
// The apache-tvm wheels ship the runtime's .cc files but not the support headers they
// include, so the armv7 build (the only one compiled from source) supplies its own. The
// byte format must be exactly the one the compiler side writes into model.so: fixed-width
// little-endian scalars, and a uint64 element count in front of every string and
// sequence, so a 32-bit reader sees the same layout as the 64-bit writer.
#ifndef MSCNN_NATIVE_TVM_SUPPORT_IO_H_
#define MSCNN_NATIVE_TVM_SUPPORT_IO_H_

#include <cstddef>
#include <cstdint>

namespace tvm {
namespace support {

// How a type travels through a Stream; specialised in serializer.h and by TVM headers
// (VMFuncInfo, FunctionInfo) with static Write(Stream*, const T&) / Read(Stream*, T*).
template <typename T, typename Enable = void>
struct Serializer;

class Stream {
 public:
  // Raw bytes: Read returns how many were read, short only at the end of the data.
  virtual std::size_t Read(void* ptr, std::size_t size) = 0;
  virtual std::size_t Write(const void* ptr, std::size_t size) = 0;
  virtual ~Stream() = default;

  template <typename T>
  void Write(const T& value) {
    Serializer<T>::Write(this, value);
  }
  template <typename T>
  bool Read(T* out) {
    return Serializer<T>::Read(this, out);
  }
  // A run of elements with no count in front (the caller wrote the count).
  template <typename T>
  void WriteArray(const T* data, std::size_t count);
  template <typename T>
  bool ReadArray(T* data, std::size_t count);
};

}  // namespace support
}  // namespace tvm

#include <tvm/support/serializer.h>

#endif  // MSCNN_NATIVE_TVM_SUPPORT_IO_H_
