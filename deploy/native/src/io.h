// mscnn-run: file access for hostile bundles and inputs. Open once, check what was
// opened (fstat on the descriptor, not the path), cap every size before reading, never
// follow a symlink inside a bundle, and never block on a FIFO or read a device.
#ifndef MSCNN_RUN_IO_H_
#define MSCNN_RUN_IO_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace mscnn {

// Owns one file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd();
  Fd(Fd&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Fd& operator=(Fd&& other) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// A user-given file (--input): symlinks followed, since the user named it, but it must
// be a regular file; a FIFO or a device is refused without a byte read. `size` gets its
// size from fstat.
Fd OpenRegular(const std::string& path, const std::string& label, std::uint64_t* size);

// A file inside a folder, reached component by component with O_NOFOLLOW, so a symlink
// anywhere on the way (the file, or a folder such as golden/) is refused, not followed.
struct InsideFile {
  enum class Status { kOk, kMissing, kSymlink, kNotRegular, kError };
  Status status = Status::kError;
  Fd fd;
  std::uint64_t size = 0;
  std::string where;  // kSymlink, kNotRegular: the path prefix at fault
  int error = 0;      // kError: errno
};
InsideFile OpenInside(int dir_fd, const std::string& rel);

// Exactly `size` bytes at `offset`; a Refusal naming `label` if the file ends sooner
// (it changed since fstat) or cannot be read.
void ReadExactly(int fd, std::uint64_t offset, void* out, std::size_t size,
                 const std::string& label);

}  // namespace mscnn

#endif  // MSCNN_RUN_IO_H_
