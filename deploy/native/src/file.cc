#include "file.h"

#include "refusal.h"

namespace mscnn {

std::string ReadAllAndClose(std::FILE* f, const std::string& label) {
  std::string bytes;
  char chunk[1 << 16];
  std::size_t got;
  while ((got = std::fread(chunk, 1, sizeof chunk, f)) > 0) bytes.append(chunk, got);
  const bool read_error = std::ferror(f) != 0;
  std::fclose(f);
  if (read_error) throw Refusal("cannot read " + label + ": I/O error");
  return bytes;
}

}  // namespace mscnn
