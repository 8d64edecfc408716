// In-memory streams over the bytes of a serialized module (armv7 TVM runtime build).
#ifndef MSCNN_NATIVE_TVM_SUPPORT_BYTES_IO_H_
#define MSCNN_NATIVE_TVM_SUPPORT_BYTES_IO_H_

#include <tvm/ffi/error.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstring>
#include <string>

namespace tvm {
namespace support {

// Reads from a buffer the caller keeps alive; nothing is copied, since the buffer is
// usually the whole executable with its weights.
class BytesInStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit BytesInStream(const std::string& bytes) : data_(bytes.data()), size_(bytes.size()) {}
  explicit BytesInStream(const ffi::Bytes& bytes) : data_(bytes.data()), size_(bytes.size()) {}
  BytesInStream(const void* data, std::size_t size)
      : data_(static_cast<const char*>(data)), size_(size) {}

  std::size_t Read(void* ptr, std::size_t size) final {
    std::size_t take = size < size_ - pos_ ? size : size_ - pos_;
    if (take > 0) std::memcpy(ptr, data_ + pos_, take);
    pos_ += take;
    return take;
  }
  std::size_t Write(const void*, std::size_t) final {
    TVM_FFI_THROW(InternalError) << "BytesInStream is read-only";
  }

 private:
  const char* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

class BytesOutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit BytesOutStream(std::string* out) : out_(out) {}

  std::size_t Read(void*, std::size_t) final {
    TVM_FFI_THROW(InternalError) << "BytesOutStream is write-only";
  }
  std::size_t Write(const void* ptr, std::size_t size) final {
    out_->append(static_cast<const char*>(ptr), size);
    return size;
  }

 private:
  std::string* out_;
};

}  // namespace support
}  // namespace tvm

#endif  // MSCNN_NATIVE_TVM_SUPPORT_BYTES_IO_H_
