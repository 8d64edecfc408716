#include "io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "refusal.h"

namespace mscnn {

Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
}

Fd& Fd::operator=(Fd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

namespace {

// Regular files only; O_NONBLOCK made the open itself safe on a FIFO, and is dropped
// again so reads behave normally (it has no effect on regular files anyway).
bool IsRegular(int fd, std::uint64_t* size) {
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0) return false;
  *size = std::uint64_t(st.st_size);
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return true;
}

}  // namespace

Fd OpenRegular(const std::string& path, const std::string& label, std::uint64_t* size) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd.valid()) throw Refusal("cannot read " + label + ": " + std::strerror(errno));
  if (!IsRegular(fd.get(), size)) {
    throw Refusal(label + " is not a regular file (a folder, device or pipe); give a .npy file");
  }
  return fd;
}

InsideFile OpenInside(int dir_fd, const std::string& rel) {
  InsideFile out;
  Fd parent;
  int at = dir_fd;
  std::size_t start = 0;
  for (;;) {
    const std::size_t slash = rel.find('/', start);
    const bool last = slash == std::string::npos;
    const std::string part = rel.substr(start, last ? std::string::npos : slash - start);
    out.where = rel.substr(0, last ? std::string::npos : slash);
    const int flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY |
                      (last ? 0 : O_DIRECTORY);
    Fd next(::openat(at, part.c_str(), flags));
    if (!next.valid()) {
      const int error = errno;
      struct stat st;
      if (::fstatat(at, part.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
        out.status = InsideFile::Status::kSymlink;
      } else if (error == ENOENT) {
        out.status = InsideFile::Status::kMissing;
      } else if (error == ENOTDIR) {
        out.status = InsideFile::Status::kNotRegular;
      } else {
        out.status = InsideFile::Status::kError;
        out.error = error;
      }
      return out;
    }
    if (last) {
      out.status = IsRegular(next.get(), &out.size) ? InsideFile::Status::kOk
                                                    : InsideFile::Status::kNotRegular;
      if (out.status == InsideFile::Status::kOk) out.fd = std::move(next);
      return out;
    }
    parent = std::move(next);
    at = parent.get();
    start = slash + 1;
  }
}

void ReadExactly(int fd, std::uint64_t offset, void* out, std::size_t size,
                 const std::string& label) {
  auto* p = static_cast<char*>(out);
  while (size > 0) {
    const std::size_t chunk = size < (std::size_t(1) << 30) ? size : std::size_t(1) << 30;
    const ssize_t n = ::pread(fd, p, chunk, off_t(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Refusal("cannot read " + label + ": " + std::strerror(errno));
    if (n == 0) throw Refusal(label + " became shorter while it was read; read it again");
    p += n;
    offset += std::uint64_t(n);
    size -= std::size_t(n);
  }
}

}  // namespace mscnn
