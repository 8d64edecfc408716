// mscnn-run's output file (--output): written whole, or not at all.
#ifndef MSCNN_RUN_OUTPUT_H_
#define MSCNN_RUN_OUTPUT_H_

#include <cstddef>
#include <string>

namespace mscnn {

// Writes to a sibling temporary file, created with O_EXCL | O_NOFOLLOW (a file or symlink
// planted under its name is refused, never written through) and removed on SIGINT,
// SIGTERM or SIGHUP, then renames it into place: a failed or interrupted run leaves no
// partial output behind. Opening it first proves the path writable before any time is
// spent on the model.
class OutputFile {
 public:
  explicit OutputFile(const std::string& path);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void Commit(const std::string& header, const void* data, std::size_t size);

 private:
  bool WriteAll(const void* data, std::size_t size);

  std::string path_, temp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace mscnn

#endif  // MSCNN_RUN_OUTPUT_H_
