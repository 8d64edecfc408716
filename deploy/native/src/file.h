// mscnn-run: reading a whole file, shared by the manifest and .npy readers.
#ifndef MSCNN_RUN_FILE_H_
#define MSCNN_RUN_FILE_H_

#include <cstdio>
#include <string>

namespace mscnn {

// Reads the rest of `f` and closes it; a read error is a Refusal "cannot read <label>".
std::string ReadAllAndClose(std::FILE* f, const std::string& label);

}  // namespace mscnn

#endif  // MSCNN_RUN_FILE_H_
