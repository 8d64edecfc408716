#include "output.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "refusal.h"

namespace mscnn {
namespace {

// The temporary output's name, for the signal handler: a fixed buffer, since a handler
// may only call async-signal-safe functions (unlink, raise).
char g_partial[4096];
volatile sig_atomic_t g_have_partial = 0;

extern "C" void RemovePartialAndDie(int sig) {
  if (g_have_partial) ::unlink(g_partial);
  ::raise(sig);  // SA_RESETHAND restored the default action: die of the same signal
}

// Holds SIGINT, SIGTERM and SIGHUP back while the temporary file and its name in
// g_partial change together.
class SignalsHeld {
 public:
  SignalsHeld() {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, sig);
    pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  ~SignalsHeld() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

 private:
  sigset_t old_;
};

}  // namespace

OutputFile::OutputFile(const std::string& path) : path_(path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) {
      throw Refusal("output path " + path + " is a folder; give a file name such as y.npy");
    }
    if (!S_ISREG(st.st_mode)) {  // a device or a pipe would be replaced by the rename
      throw Refusal("output path " + path +
                    " is not a regular file; give a file name such as y.npy");
    }
    if (::access(path.c_str(), W_OK) != 0) {
      throw Refusal("output path " + path + " is not writable (" + std::strerror(errno) +
                    "); choose another --output");
    }
  }
  temp_ = path + ".partial-" + std::to_string(::getpid());
  if (temp_.size() >= sizeof g_partial) throw Refusal("output path " + path + " is too long");
  struct sigaction action = {};
  action.sa_handler = RemovePartialAndDie;
  action.sa_flags = SA_RESETHAND | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &action, nullptr);
  SignalsHeld held;
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd_ < 0 && errno == EEXIST) {
    throw Refusal("output path " + path + ": " + temp_ + " is in the way (left by another "
                  "run, or planted); remove it and run again");
  }
  if (fd_ < 0) {
    throw Refusal("output path " + path + " is not writable (" + std::strerror(errno) +
                  "); choose a writable folder for --output");
  }
  std::memcpy(g_partial, temp_.c_str(), temp_.size() + 1);
  g_have_partial = 1;
}

OutputFile::~OutputFile() {
  SignalsHeld held;
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && g_have_partial) ::unlink(temp_.c_str());
  g_have_partial = 0;
}

void OutputFile::Commit(const std::string& header, const void* data, std::size_t size) {
  if (!WriteAll(header.data(), header.size()) || !WriteAll(data, size) || ::fsync(fd_) != 0) {
    throw Refusal("cannot write " + path_ + ": " + std::strerror(errno));
  }
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw Refusal("cannot write " + path_ + ": " + std::strerror(errno));
  SignalsHeld held;
  if (::rename(temp_.c_str(), path_.c_str()) != 0) {
    throw Refusal("cannot write " + path_ + ": " + std::strerror(errno));
  }
  committed_ = true;
  g_have_partial = 0;
}

bool OutputFile::WriteAll(const void* data, std::size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= std::size_t(n);
  }
  return true;
}

}  // namespace mscnn
